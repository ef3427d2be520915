//! Network values: VLAN ids, ports, CIDRs, MAC addresses, endpoints and DNS upstreams.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::{DomainName, IfName, ValueError, string_newtype};

/// Implements serde and JsonSchema for a newtype over an unsigned integer that has a
/// `new(u64) -> Result<Self, ValueError>` constructor.
macro_rules! int_newtype {
    ($ty:ident, $inner:ty, $desc:expr, $min:expr, $max:expr) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_u64(u64::from(self.0))
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($desc)
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        $ty::new(v).map_err(E::custom)
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                        match u64::try_from(v) {
                            Ok(v) => $ty::new(v).map_err(E::custom),
                            Err(_) => $ty::new(u64::MAX).map_err(|_| {
                                E::custom(ValueError::new(
                                    format!("{v} is negative"),
                                    concat!("expected ", $desc),
                                ))
                            }),
                        }
                    }
                }
                d.deserialize_u64(V)
            }
        }
        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let mut map = serde_json::Map::new();
                map.insert("type".into(), "integer".into());
                map.insert("description".into(), $desc.into());
                map.insert("minimum".into(), ($min as u64).into());
                map.insert("maximum".into(), ($max as u64).into());
                schemars::Schema::from(map)
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
        impl $ty {
            pub fn get(self) -> $inner {
                self.0
            }
        }
    };
}

/// An 802.1Q VLAN id, 1..=4094 (0 and 4095 are reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VlanId(u16);
impl VlanId {
    pub fn new(v: u64) -> Result<Self, ValueError> {
        match u16::try_from(v) {
            Ok(id @ 1..=4094) => Ok(Self(id)),
            _ => Err(ValueError::new(
                format!("VLAN id {v} is out of range"),
                "VLAN ids are 1..=4094; 0 and 4095 are reserved by 802.1Q",
            )),
        }
    }
}
int_newtype!(VlanId, u16, "802.1Q VLAN id, 1..=4094", 1, 4094);

/// A TCP or UDP port, 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(u16);
impl Port {
    pub fn new(v: u64) -> Result<Self, ValueError> {
        match u16::try_from(v) {
            Ok(p @ 1..=65535) => Ok(Self(p)),
            _ => Err(ValueError::new(
                format!("port {v} is out of range"),
                "ports are 1..=65535",
            )),
        }
    }
}
int_newtype!(Port, u16, "TCP/UDP port, 1..=65535", 1, 65535);

/// A link MTU in bytes, 576..=9216 (IPv6 links need at least 1280).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mtu(u16);
impl Mtu {
    pub fn new(v: u64) -> Result<Self, ValueError> {
        match u16::try_from(v) {
            Ok(m @ 576..=9216) => Ok(Self(m)),
            _ => Err(ValueError::new(
                format!("MTU {v} is out of range"),
                "an MTU is 576..=9216 bytes; Ethernet uses 1500, jumbo frames 9000",
            )),
        }
    }
}
int_newtype!(Mtu, u16, "link MTU in bytes, 576..=9216", 576, 9216);

/// A port or an inclusive range of ports: `22` or `"8000-8100"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: Port,
    pub last: Port,
}

impl PortRange {
    const HINT: &'static str = "a port is 1..=65535; a range is written \"8000-8100\"";
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let one = |p: &str| -> Result<Port, ValueError> {
            let n: u64 = p.trim().parse().map_err(|_| {
                ValueError::new(format!("{s:?} is not a port or port range"), Self::HINT)
            })?;
            Port::new(n).map_err(|e| ValueError::new(e.message, Self::HINT))
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (one(a)?, one(b)?),
            None => {
                let p = one(s)?;
                (p, p)
            }
        };
        if first > last {
            return Err(ValueError::new(
                format!("port range {s:?} runs backwards"),
                Self::HINT,
            ));
        }
        Ok(Self { first, last })
    }
    pub fn single(p: Port) -> Self {
        Self { first: p, last: p }
    }
    pub fn len(&self) -> u32 {
        u32::from(self.last.get()) - u32::from(self.first.get()) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl serde::Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            s.serialize_u64(u64::from(self.first.get()))
        } else {
            s.collect_str(self)
        }
    }
}
impl<'de> serde::Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (22) or a port range (\"8000-8100\")")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortRange, E> {
                Port::new(v)
                    .map(PortRange::single)
                    .map_err(|e| E::custom(ValueError::new(e.message, PortRange::HINT)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortRange, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(ValueError::new(
                        format!("port {v} is out of range"),
                        PortRange::HINT,
                    ))),
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortRange, E> {
                PortRange::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}
impl schemars::JsonSchema for PortRange {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PortRange".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "a port (22) or an inclusive port range (\"8000-8100\")",
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "pattern": "^[0-9]{1,5}(-[0-9]{1,5})?$"}
            ]
        })
    }
}

/// An IPv4 or IPv6 address with a prefix length: `192.168.1.1/24`. On an interface the
/// host part is the interface's own address; in a rule or allowed-IPs list it is a network.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str =
            "write an address with its prefix length, like 192.168.1.1/24 or fd00::1/64";
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Self(net));
        }
        // A bare address means a single host, as in nft and iptables.
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(Self(IpNet::from(addr)));
        }
        Err(ValueError::new(format!("{s:?} is not a CIDR"), HINT))
    }
    pub fn net(&self) -> IpNet {
        self.0
    }
    pub fn addr(&self) -> IpAddr {
        self.0.addr()
    }
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }
    /// The network with the host bits cleared.
    pub fn network(&self) -> IpNet {
        self.0.trunc()
    }
    pub fn is_ipv4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }
    pub fn contains(&self, addr: &IpAddr) -> bool {
        self.0.trunc().contains(addr)
    }
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let (a, b) = (self.network(), other.network());
        a.contains(&b.network()) || b.contains(&a.network())
    }
    /// Whether the address part is the network or (for IPv4) the broadcast address,
    /// which cannot be an interface's own address.
    pub fn is_network_or_broadcast(&self) -> bool {
        match self.0 {
            IpNet::V4(n) if n.prefix_len() < 31 => {
                n.addr() == n.network() || n.addr() == n.broadcast()
            }
            IpNet::V6(n) if n.prefix_len() < 127 => n.addr() == n.network(),
            _ => false,
        }
    }
}
impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
string_newtype!(
    Cidr,
    "IP address with prefix length, like 192.168.1.1/24",
    None
);

/// An Ethernet MAC address, `52:54:00:12:34:56` (':' or '-' separated); stored lowercase.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "a MAC address is six hex bytes, like 52:54:00:12:34:56";
        let bad = || ValueError::new(format!("{s:?} is not a MAC address"), HINT);
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if out[0] & 1 == 1 {
            return Err(ValueError::new(
                format!("{s:?} is a multicast address"),
                "a NIC or DHCP client has a unicast MAC: the lowest bit of the first byte is 0",
            ));
        }
        Ok(Self(out))
    }
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}
impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}
string_newtype!(
    MacAddr,
    "MAC address, like 52:54:00:12:34:56",
    Some("^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$")
);

/// Host part of an endpoint or upstream: an IP address or a DNS name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(DomainName),
}
impl Host {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "write an IP address or a DNS name, like pool.ntp.org";
        match split_host_port(s, HINT)? {
            (host, None) => Ok(host),
            (_, Some(_)) => Err(ValueError::new(format!("{s:?} must not have a port"), HINT)),
        }
    }
}
string_newtype!(Host, "IP address or DNS name", None);

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Host::Ip(a) => write!(f, "{a}"),
            Host::Name(n) => write!(f, "{n}"),
        }
    }
}

/// Splits `host:port`, `[v6]:port`, `host` or `[v6]` into host and optional port.
fn split_host_port(s: &str, hint: &'static str) -> Result<(Host, Option<Port>), ValueError> {
    let bad = || ValueError::new(format!("{s:?} is not a host or host:port"), hint);
    if let Ok(addr) = s.parse::<SocketAddr>() {
        let port =
            Port::new(u64::from(addr.port())).map_err(|e| ValueError::new(e.message, hint))?;
        return Ok((Host::Ip(addr.ip()), Some(port)));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((Host::Ip(ip), None));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let ip = rest.strip_suffix(']').ok_or_else(bad)?;
        return Ok((Host::Ip(ip.parse().map_err(|_| bad())?), None));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => {
            let n: u64 = p.parse().map_err(|_| bad())?;
            (
                h,
                Some(Port::new(n).map_err(|e| ValueError::new(e.message, hint))?),
            )
        }
        None => (s, None),
    };
    let name = DomainName::parse(host).map_err(|e| ValueError::new(e.message, hint))?;
    Ok((Host::Name(name), port))
}

/// A WireGuard or replication peer endpoint: `vpn.example.net:51820` or `[2001:db8::1]:51820`.
/// DNS names are kept and re-resolved by netd.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub host: Host,
    pub port: Port,
}
impl Endpoint {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "write host:port, like vpn.example.net:51820 or [2001:db8::1]:51820";
        match split_host_port(s, HINT)? {
            (host, Some(port)) => Ok(Self { host, port }),
            (_, None) => Err(ValueError::new(format!("endpoint {s:?} has no port"), HINT)),
        }
    }
}
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}
string_newtype!(Endpoint, "host:port", None);

/// How dnsd talks to an upstream resolver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// Plain DNS over UDP with TCP fallback, port 53.
    Plain,
    /// DNS over TLS (RFC 7858), port 853.
    Tls,
    /// DNS over HTTPS (RFC 8484).
    Https,
}

/// An upstream DNS server: `9.9.9.9`, `9.9.9.9:5353`, `tls://dns.quad9.net`,
/// `tls://9.9.9.9#dns.quad9.net` (address with the TLS name to verify) or
/// `https://dns.quad9.net/dns-query`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Upstream {
    pub kind: UpstreamKind,
    pub host: Host,
    pub port: Port,
    /// Name to verify in the server's certificate, when `host` is an address.
    pub tls_name: Option<DomainName>,
    /// Path of a DoH endpoint.
    pub path: String,
}

impl Upstream {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str =
            "use an address (9.9.9.9), tls://host[:port][#tls-name] or https://host/dns-query";
        if s.starts_with("https://") {
            let url = url::Url::parse(s)
                .map_err(|e| ValueError::new(format!("{s:?} is not a valid URL: {e}"), HINT))?;
            refuse_credentials(&url)?;
            let host = match url.host() {
                Some(url::Host::Domain(d)) => {
                    Host::Name(DomainName::parse(d).map_err(|e| ValueError::new(e.message, HINT))?)
                }
                Some(url::Host::Ipv4(a)) => Host::Ip(IpAddr::V4(a)),
                Some(url::Host::Ipv6(a)) => Host::Ip(IpAddr::V6(a)),
                None => return Err(ValueError::new(format!("{s:?} has no host"), HINT)),
            };
            let port = Port::new(u64::from(url.port().unwrap_or(443)))
                .map_err(|e| ValueError::new(e.message, HINT))?;
            let path = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_owned(),
            };
            return Ok(Self {
                kind: UpstreamKind::Https,
                host,
                port,
                tls_name: None,
                path,
            });
        }
        let (kind, rest, default_port) = match s.strip_prefix("tls://") {
            Some(rest) => (UpstreamKind::Tls, rest, 853),
            None => {
                if s.contains("://") {
                    return Err(ValueError::new(
                        format!("upstream {s:?} has an unknown scheme"),
                        HINT,
                    ));
                }
                (UpstreamKind::Plain, s, 53)
            }
        };
        let (addr, tls_name) = match rest.split_once('#') {
            Some((a, n)) if kind == UpstreamKind::Tls => (
                a,
                Some(DomainName::parse(n).map_err(|e| ValueError::new(e.message, HINT))?),
            ),
            Some(_) => {
                return Err(ValueError::new(
                    format!("upstream {s:?}: '#name' is only meaningful with tls://"),
                    HINT,
                ));
            }
            None => (rest, None),
        };
        let (host, port) = split_host_port(addr, HINT)?;
        if kind == UpstreamKind::Plain && matches!(host, Host::Name(_)) {
            return Err(ValueError::new(
                format!("plain upstream {s:?} must be an IP address"),
                "a plain resolver is given by address, because resolving its name would need DNS",
            ));
        }
        let port = match port {
            Some(p) => p,
            None => Port::new(default_port).map_err(|e| ValueError::new(e.message, HINT))?,
        };
        Ok(Self {
            kind,
            host,
            port,
            tls_name,
            path: String::new(),
        })
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            UpstreamKind::Plain => {
                write!(f, "{}", self.host)?;
                if self.port.get() != 53 {
                    write!(f, ":{}", self.port)?;
                }
                Ok(())
            }
            UpstreamKind::Tls => {
                write!(f, "tls://{}", self.host)?;
                if self.port.get() != 853 {
                    write!(f, ":{}", self.port)?;
                }
                if let Some(n) = &self.tls_name {
                    write!(f, "#{n}")?;
                }
                Ok(())
            }
            UpstreamKind::Https => {
                write!(f, "https://{}", self.host)?;
                if self.port.get() != 443 {
                    write!(f, ":{}", self.port)?;
                }
                write!(f, "{}", self.path)
            }
        }
    }
}
string_newtype!(
    Upstream,
    "DNS upstream: 9.9.9.9, tls://dns.quad9.net or https://dns.quad9.net/dns-query",
    None
);

/// Where the API listens: an address with port (`192.168.1.1:443`, `[::1]:8443`) or the
/// name of an interface, VLAN or bridge, meaning all of its addresses on the API's port.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Listen {
    Addr(SocketAddr),
    Interface(IfName),
}
impl Listen {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "use address:port (192.168.1.1:443) or an interface name (lan)";
        if let Ok(a) = s.parse::<SocketAddr>() {
            if a.port() == 0 {
                return Err(ValueError::new(format!("{s:?} has port 0"), HINT));
            }
            return Ok(Self::Addr(a));
        }
        if s.parse::<IpAddr>().is_ok() {
            return Err(ValueError::new(format!("{s:?} has no port"), HINT));
        }
        IfName::parse(s)
            .map(Self::Interface)
            .map_err(|e| ValueError::new(e.message, HINT))
    }
}
impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(a) => write!(f, "{a}"),
            Self::Interface(i) => write!(f, "{i}"),
        }
    }
}
string_newtype!(Listen, "address:port, or an interface name", None);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_and_ports() {
        assert!(VlanId::new(1).is_ok());
        assert!(VlanId::new(4094).is_ok());
        assert!(VlanId::new(0).is_err());
        assert!(VlanId::new(4095).is_err());
        assert!(PortRange::parse("8000-8100").is_ok());
        assert!(PortRange::parse("8100-8000").is_err());
        assert!(PortRange::parse("0").is_err());
        assert!(PortRange::parse("70000").is_err());
    }

    #[test]
    fn cidrs() {
        let Ok(c) = Cidr::parse("192.168.1.1/24") else {
            panic!("valid CIDR refused")
        };
        assert!(
            c.contains(
                &"192.168.1.200"
                    .parse()
                    .unwrap_or(IpAddr::from([0, 0, 0, 0]))
            )
        );
        assert!(Cidr::parse("192.168.1.0/33").is_err());
        assert!(Cidr::parse("fd00::1/64").is_ok());
        assert!(Cidr::parse("10.0.0.0/8").is_ok_and(|a| {
            a.overlaps(&Cidr(
                "10.1.0.0/16"
                    .parse()
                    .unwrap_or_else(|_| IpNet::from(IpAddr::from([0, 0, 0, 0]))),
            ))
        }));
        assert!(Cidr::parse("192.168.1.0/24").is_ok_and(|c| c.is_network_or_broadcast()));
    }

    #[test]
    fn macs() {
        assert_eq!(
            MacAddr::parse("52-54-00-AB-cd-EF").map(|m| m.to_string()),
            Ok("52:54:00:ab:cd:ef".to_owned())
        );
        assert!(MacAddr::parse("52:54:00:ab:cd").is_err());
        assert!(MacAddr::parse("01:00:5e:00:00:01").is_err());
    }

    #[test]
    fn upstreams_round_trip() {
        for s in [
            "9.9.9.9",
            "9.9.9.9:5353",
            "[2620:fe::fe]:5353",
            "tls://dns.quad9.net",
            "tls://9.9.9.9#dns.quad9.net",
            "https://dns.quad9.net/dns-query",
            "https://1.1.1.1:8443/dns-query",
        ] {
            let u = Upstream::parse(s);
            assert_eq!(u.map(|u| u.to_string()), Ok(s.to_owned()), "{s}");
        }
        assert!(Upstream::parse("dns.quad9.net").is_err());
        assert!(Upstream::parse("quic://x").is_err());
        assert!(Upstream::parse("9.9.9.9#x").is_err());
    }

    #[test]
    fn endpoints_and_listen() {
        assert!(Endpoint::parse("vpn.example.net:51820").is_ok());
        assert!(Endpoint::parse("[2001:db8::1]:51820").is_ok());
        assert!(Endpoint::parse("vpn.example.net").is_err());
        assert!(matches!(Listen::parse("lan"), Ok(Listen::Interface(_))));
        assert!(matches!(Listen::parse("[::1]:443"), Ok(Listen::Addr(_))));
        assert!(Listen::parse("192.168.1.1").is_err());
    }

    #[test]
    fn urls_with_credentials_are_refused_without_echoing_them() {
        for s in [
            "https://user:hunter2@lists.example/hosts",
            "http://token@lists.example/hosts",
            "https://:hunter2@lists.example/",
        ] {
            let e = HttpUrl::parse(s)
                .err()
                .unwrap_or_else(|| panic!("{s} accepted"));
            assert!(!e.message.contains("hunter2"), "{}", e.message);
            assert!(e.hint.contains("credentials"), "{}", e.hint);
        }
        let e = Upstream::parse("https://u:hunter2@dns.example/dns-query")
            .err()
            .unwrap_or_else(|| panic!("upstream with a password accepted"));
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        assert!(HttpUrl::parse("https://lists.example/hosts").is_ok());
        assert!(Upstream::parse("https://dns.example/dns-query").is_ok());
    }
}

/// A user name or password in a URL is a credential, and appliance.toml holds none: the
/// file is shown by `applctl config show`, kept in every generation and readable by the
/// daemons. The URL itself is not echoed back, since it holds the secret.
fn refuse_credentials(u: &url::Url) -> Result<(), ValueError> {
    if u.username().is_empty() && u.password().is_none() {
        return Ok(());
    }
    Err(ValueError::new(
        format!(
            "the URL of host {} carries a user name or password",
            u.host_str().unwrap_or("?")
        ),
        "credentials never go in appliance.toml; use a URL without user:password@",
    ))
}

/// An http:// or https:// URL, for block lists and the update channel.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HttpUrl(url::Url);
impl HttpUrl {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "write a full http:// or https:// URL";
        let u = url::Url::parse(s)
            .map_err(|e| ValueError::new(format!("{s:?} is not a URL: {e}"), HINT))?;
        if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
            return Err(ValueError::new(
                format!("{s:?} is not an http(s) URL"),
                HINT,
            ));
        }
        refuse_credentials(&u)?;
        Ok(Self(u))
    }
    pub fn as_url(&self) -> &url::Url {
        &self.0
    }
}
impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}
string_newtype!(
    HttpUrl,
    "http:// or https:// URL, without user name or password",
    Some("^https?://")
);
