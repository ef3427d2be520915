//! What netd reads back from the kernel: links, addresses, routes of the main table, and
//! the bridge netfilter switches. Links are referred to by name everywhere: the planner
//! is pure and the names are what the config speaks.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// The ifalias of every link netd created (bridges, VLANs).
pub const OWNER_ALIAS: &str = "appliance";
/// The ifalias prefix of a NIC netd adopted; the rest is the kernel name it had then, so
/// that `device = "eth0"` still finds the NIC after netd renamed it.
pub const NIC_ALIAS_PREFIX: &str = "appliance nic ";

/// `RTPROT_STATIC`: the protocol of every route netd adds. Routes of other protocols
/// (kernel, boot, dhcp, ra) are never removed.
pub const PROTO_STATIC: u8 = 4;

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Bridge options netd sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgeOpts {
    pub vlan_filtering: bool,
    pub stp: bool,
}

/// One entry of a bridge's VLAN table (`bridge vlan show`), on the bridge itself or on a
/// port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BridgeVlan {
    pub vid: u16,
    /// Untagged frames arriving on the link are put in this VLAN.
    pub pvid: bool,
    /// Frames of this VLAN leave the link untagged.
    pub untagged: bool,
}

impl BridgeVlan {
    /// What the kernel gives every new bridge and every port that joins one: VLAN 1,
    /// PVID, untagged.
    pub const KERNEL_DEFAULT: Self = Self {
        vid: 1,
        pvid: true,
        untagged: true,
    };

    /// A VLAN carried tagged: neither PVID nor untagged.
    pub const fn tagged(vid: u16) -> Self {
        Self {
            vid,
            pvid: false,
            untagged: false,
        }
    }

    /// The VLAN of an access port: PVID, untagged.
    pub const fn access(vid: u16) -> Self {
        Self {
            vid,
            pvid: true,
            untagged: true,
        }
    }
}

/// The kinds of link netd creates and deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Virtual {
    Bridge(BridgeOpts),
    /// An 802.1Q sub-interface.
    Vlan {
        parent: String,
        id: u16,
    },
}

/// One kernel link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`bridge`, `vlan`, `veth`, ...); `None` for plain hardware NICs.
    pub kind: Option<String>,
    pub mac: Option<Mac>,
    /// The burnt-in address (`IFLA_PERM_ADDRESS`), when the driver reports one.
    pub perm_mac: Option<Mac>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    pub loopback: bool,
    /// Name of the bridge this link is a port of.
    pub master: Option<String>,
    pub alias: Option<String>,
    /// For `vlan` links: id and parent name.
    pub vlan: Option<(u16, String)>,
    /// For `bridge` links.
    pub bridge: Option<BridgeOpts>,
}

impl Link {
    /// Created by netd (alias [`OWNER_ALIAS`]) or adopted by it (alias
    /// [`NIC_ALIAS_PREFIX`]`<name>`).
    pub fn owned(&self) -> bool {
        self.created() || self.adopted_as().is_some()
    }

    pub fn created(&self) -> bool {
        self.alias.as_deref() == Some(OWNER_ALIAS)
    }

    /// The kernel name the NIC had when netd adopted it.
    pub fn adopted_as(&self) -> Option<&str> {
        self.alias.as_deref()?.strip_prefix(NIC_ALIAS_PREFIX)
    }

    /// Links netd could create: never matched as a NIC.
    pub fn is_virtual(&self) -> bool {
        matches!(self.kind.as_deref(), Some("bridge" | "vlan"))
    }

    /// What netd would need to recreate this link, if it is a kind netd creates.
    pub fn as_virtual(&self) -> Option<Virtual> {
        match self.kind.as_deref()? {
            "bridge" => Some(Virtual::Bridge(self.bridge.unwrap_or_default())),
            "vlan" => self.vlan.as_ref().map(|(id, parent)| Virtual::Vlan {
                parent: parent.clone(),
                id: *id,
            }),
            _ => None,
        }
    }
}

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub link: String,
    /// Address and prefix length, like `192.168.1.1/24`.
    pub net: IpNet,
}

/// A unicast route of the main table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    /// Output link; `None` for multipath routes, which netd never touches.
    pub dev: Option<String>,
    /// `RTA_PRIORITY`; IPv6 routes added without one get 1024 from the kernel.
    pub metric: u32,
    /// `rtm_protocol`.
    pub protocol: u8,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        write!(f, " metric {} proto {}", self.metric, self.protocol)
    }
}

/// `net.bridge.bridge-nf-call-{iptables,ip6tables,arptables}` of the namespace. With
/// br_netfilter on, bridged frames traverse the IP hooks with the bridge *port* as
/// device, and the firewall's `oifname <bridge>` matches stop working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeNf {
    pub iptables: bool,
    pub ip6tables: bool,
    pub arptables: bool,
}

impl BridgeNf {
    pub const OFF: Self = Self {
        iptables: false,
        ip6tables: false,
        arptables: false,
    };
}

/// The per-link IPv6 switches netd sets, `/proc/sys/net/ipv6/conf/<link>/*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Conf {
    /// No IPv6 at all on the link, not even link-local (`ipv6 = "none"`).
    pub disable_ipv6: bool,
    /// 0: router advertisements ignored; 1: accepted unless the box forwards; 2: accepted
    /// even though it forwards (a router's SLAAC uplink).
    pub accept_ra: u8,
    /// Addresses made from the prefixes of accepted advertisements (SLAAC).
    pub autoconf: bool,
}

impl Ipv6Conf {
    /// What the kernel gives a new link (`conf/default` untouched).
    pub const KERNEL_DEFAULT: Self = Self {
        disable_ipv6: false,
        accept_ra: 1,
        autoconf: true,
    };
    /// A SLAAC uplink of a router.
    pub const SLAAC: Self = Self {
        disable_ipv6: false,
        accept_ra: 2,
        autoconf: true,
    };
    /// Static addresses only: advertisements from the link (a rogue router on the LAN)
    /// configure nothing.
    pub const STATIC: Self = Self {
        disable_ipv6: false,
        accept_ra: 0,
        autoconf: false,
    };
    pub const DISABLED: Self = Self {
        disable_ipv6: true,
        accept_ra: 0,
        autoconf: false,
    };
}

/// `net.ipv4.ip_forward` and `net.ipv6.conf.all.forwarding` of the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Forwarding {
    pub ipv4: bool,
    pub ipv6: bool,
}

/// Everything the planner looks at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub links: Vec<Link>,
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
    /// `None` when br_netfilter is not loaded: there is nothing to switch off.
    pub bridge_nf: Option<BridgeNf>,
    /// IPv6 switches by link name; a link without an entry has no IPv6 in its kernel.
    pub ipv6: std::collections::BTreeMap<String, Ipv6Conf>,
    /// `None` when the switches cannot be read.
    pub forwarding: Option<Forwarding>,
    /// The VLAN tables of bridges (their `self` entries) and of bridge ports, by link
    /// name, sorted by id; links without entries are left out (a kernel without
    /// `CONFIG_BRIDGE_VLAN_FILTERING` reports none).
    pub bridge_vlans: std::collections::BTreeMap<String, Vec<BridgeVlan>>,
}

impl Observed {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The VLAN table entries of link `name`.
    pub fn bridge_vlans_of(&self, name: &str) -> &[BridgeVlan] {
        self.bridge_vlans
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}
