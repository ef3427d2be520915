//! The real adapter: rtnetlink over a netlink socket, optionally opened inside another
//! network namespace (the namespace tests point it at their router).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    AfSpecBridge, BridgeStpState, BridgeVlanInfoFlags, InfoBridge, InfoData, InfoVlan,
    LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType, RouteVia,
};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgeVlan, LinkMessageBuilder, LinkUnspec, LinkVlan,
    RouteMessageBuilder,
};

use super::action::Action;
use super::adapter::{Netlink, NetlinkError};
use super::state::{
    Address, BridgeNf, BridgeOpts, BridgeVlan, Forwarding, Ipv6Conf, Link, Mac, OWNER_ALIAS,
    Observed, Route, Virtual,
};

const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;
const RT_TABLE_MAIN: u32 = 254;
const BRIDGE_NF: [&str; 3] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    "/proc/sys/net/bridge/bridge-nf-call-arptables",
];

/// rtnetlink on a private single-threaded tokio runtime: every call blocks until the
/// kernel answered, which keeps the adapter synchronous like the rest of the planner.
pub struct Rtnetlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
    netns: Option<PathBuf>,
}

impl fmt::Debug for Rtnetlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rtnetlink")
            .field("netns", &self.netns)
            .finish_non_exhaustive()
    }
}

/// Runs `f` on a thread that entered the network namespace at `netns` (a file like
/// `/run/netns/<name>`), or right here without one. A netlink socket belongs to the
/// namespace it was created in, and `/proc/sys/net` shows the namespace of the reading
/// thread, so both are done through this.
fn in_netns<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NetlinkError> {
    let Some(path) = netns else { return Ok(f()) };
    let enter = format!("setns {}", path.display());
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(path).map_err(|e| NetlinkError::other(&enter, e.to_string()))?;
            nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetlinkError::errno(&enter, e as i32))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(NetlinkError::other(&enter, "the namespace thread panicked")))
    })
}

fn nl_error(op: &str, e: rtnetlink::Error) -> NetlinkError {
    match e {
        rtnetlink::Error::NetlinkError(m) => NetlinkError::errno(op, -m.raw_code()),
        other => NetlinkError::other(op, other.to_string()),
    }
}

fn mac(bytes: &[u8]) -> Option<Mac> {
    <[u8; 6]>::try_from(bytes)
        .ok()
        .filter(|m| m != &[0; 6])
        .map(Mac)
}

fn parse_link(m: &LinkMessage, names: &BTreeMap<u32, String>) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        perm_mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        loopback: m.header.flags.contains(LinkFlags::Loopback),
        master: None,
        alias: None,
        vlan: None,
        bridge: None,
    };
    let (mut parent, mut vlan_id) = (None, None);
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(b) => l.mac = mac(b),
            LinkAttribute::PermAddress(b) => l.perm_mac = mac(b),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(i) => l.master = names.get(i).cloned(),
            LinkAttribute::IfAlias(s) if !s.is_empty() => l.alias = Some(s.clone()),
            LinkAttribute::Link(i) => parent = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vlan(v)) => {
                            vlan_id = v.iter().find_map(|x| match x {
                                InfoVlan::Id(id) => Some(*id),
                                _ => None,
                            });
                        }
                        LinkInfo::Data(InfoData::Bridge(b)) => {
                            let mut o = BridgeOpts::default();
                            for x in b {
                                match x {
                                    InfoBridge::VlanFiltering(f) => o.vlan_filtering = *f,
                                    InfoBridge::StpState(s) => {
                                        o.stp = !matches!(s, BridgeStpState::Disabled)
                                    }
                                    _ => {}
                                }
                            }
                            l.bridge = Some(o);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if l.kind.as_deref() == Some("bridge") && l.bridge.is_none() {
        l.bridge = Some(BridgeOpts::default());
    }
    if let (Some(id), Some(p)) = (vlan_id, parent) {
        l.vlan = Some((id, names.get(&p).cloned().unwrap_or_default()));
    }
    l
}

/// The VLAN table in one message of an `AF_BRIDGE` link dump with `RTEXT_FILTER_BRVLAN`
/// (`bridge vlan show`): the kernel sends one per bridge (its `self` entries) and one per
/// port, each VLAN on its own (ranges come only with the compressed filter).
fn parse_bridge_vlans(m: &LinkMessage) -> Vec<BridgeVlan> {
    let mut out: Vec<BridgeVlan> = m
        .attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::AfSpecBridge(spec) => Some(spec),
            _ => None,
        })
        .flatten()
        .filter_map(|s| match s {
            AfSpecBridge::VlanInfo(v) => Some(BridgeVlan {
                vid: v.vid,
                pvid: v.flags.contains(BridgeVlanInfoFlags::Pvid),
                untagged: v.flags.contains(BridgeVlanInfoFlags::Untagged),
            }),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// The request of `bridge vlan add|del vid N dev L [pvid] [untagged] [self]`.
/// RTM_NEWLINK changing a bridge's options: only what changes (see `create` on
/// vlan_filtering), and no IFLA_IFNAME: a name in the request is a rename, even to the
/// same name, and Debian's 6.1 kernel refuses any rename of a link that is up with EBUSY
/// before it compares the names (found by the VM test switching filtering off).
fn bridge_change_message(
    link: &str,
    index: u32,
    opts: &BridgeOpts,
    previous: &BridgeOpts,
) -> LinkMessage {
    let mut b = LinkMessageBuilder::<LinkBridge>::new(link).index(index);
    if opts.vlan_filtering != previous.vlan_filtering {
        b = b.vlan_filtering(opts.vlan_filtering);
    }
    if opts.stp != previous.stp {
        b = b.stp_state(stp_state(opts.stp));
    }
    let mut msg = b.build();
    msg.attributes
        .retain(|a| !matches!(a, LinkAttribute::IfName(_)));
    msg
}

fn bridge_vlan_message(index: u32, vlan: &BridgeVlan, on_self: bool) -> LinkMessage {
    let mut flags = BridgeVlanInfoFlags::empty();
    if vlan.pvid {
        flags |= BridgeVlanInfoFlags::Pvid;
    }
    if vlan.untagged {
        flags |= BridgeVlanInfoFlags::Untagged;
    }
    let mut b = LinkBridgeVlan::new(index);
    if on_self {
        b = b.bridge_self();
    }
    b.vlan(vlan.vid, flags).build()
}

fn parse_address(m: &AddressMessage, names: &BTreeMap<u32, String>) -> Option<Address> {
    let find = |want_local: bool| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) if want_local => Some(*ip),
            AddressAttribute::Address(ip) if !want_local => Some(*ip),
            _ => None,
        })
    };
    // IFA_LOCAL is the address of IPv4 links; IFA_ADDRESS is the peer on point-to-point
    // ones, and the only one IPv6 reports.
    let ip = find(true).or_else(|| find(false))?;
    Some(Address {
        link: names.get(&m.header.index)?.clone(),
        net: IpNet::new(ip, m.header.prefix_len).ok()?,
    })
}

fn parse_route(m: &RouteMessage, names: &BTreeMap<u32, String>, v4: bool) -> Option<Route> {
    if m.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(m.header.table);
    let (mut dst, mut gateway, mut dev, mut metric) = (None, None, None, 0);
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(IpAddr::V4(*ip)),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dst = Some(IpAddr::V6(*ip)),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(IpAddr::V4(*ip)),
            RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => gateway = Some(IpAddr::V6(*ip)),
            RouteAttribute::Via(RouteVia::Inet6(ip)) => gateway = Some(IpAddr::V6(*ip)),
            RouteAttribute::Oif(i) => dev = names.get(i).cloned(),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    if table != RT_TABLE_MAIN {
        return None;
    }
    let any = if v4 {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    Some(Route {
        dst: IpNet::new(dst.unwrap_or(any), m.header.destination_prefix_length).ok()?,
        gateway,
        dev,
        metric,
        protocol: u8::from(m.header.protocol),
    })
}

fn route_message(r: &Route, index: u32, op: &str) -> Result<RouteMessage, NetlinkError> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.addr(), r.dst.prefix_len())
        .map_err(|e| NetlinkError::other(op, e.to_string()))?;
    if let Some(g) = r.gateway {
        b = b
            .gateway(g)
            .map_err(|e| NetlinkError::other(op, e.to_string()))?;
    }
    Ok(b.output_interface(index)
        .priority(r.metric)
        .protocol(RouteProtocol::from(r.protocol))
        .build())
}

fn stp_state(on: bool) -> BridgeStpState {
    if on {
        BridgeStpState::KernelStp
    } else {
        BridgeStpState::Disabled
    }
}

impl Rtnetlink {
    /// Talks to the kernel in netd's own network namespace.
    pub fn new() -> Result<Self, NetlinkError> {
        Self::open(None)
    }

    /// Talks to the kernel inside the network namespace at `path`
    /// (`/run/netns/<name>` for `ip netns add <name>`).
    pub fn in_netns(path: impl AsRef<Path>) -> Result<Self, NetlinkError> {
        Self::open(Some(path.as_ref().to_path_buf()))
    }

    fn open(netns: Option<PathBuf>) -> Result<Self, NetlinkError> {
        let op = "open a netlink socket";
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| NetlinkError::other(op, e.to_string()))?;
        let reactor = rt.handle().clone();
        let (connection, handle) = in_netns(netns.as_deref(), move || {
            let _enter = reactor.enter();
            rtnetlink::new_connection().map(|(c, h, _)| (c, h))
        })?
        .map_err(|e| NetlinkError::other(op, e.to_string()))?;
        rt.spawn(connection);
        Ok(Self { rt, handle, netns })
    }

    fn index(&self, name: &str, op: &str) -> Result<u32, NetlinkError> {
        let found = self
            .rt
            .block_on(
                self.handle
                    .link()
                    .get()
                    .match_name(name.to_string())
                    .execute()
                    .try_next(),
            )
            .map_err(|e| nl_error(op, e))?;
        found
            .map(|m| m.header.index)
            .ok_or_else(|| NetlinkError::errno(op, ENODEV))
    }

    fn set(&self, msg: LinkMessage, op: &str) -> Result<(), NetlinkError> {
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(|e| nl_error(op, e))
    }

    fn bridge_nf(&self) -> Result<Option<BridgeNf>, NetlinkError> {
        in_netns(self.netns.as_deref(), || {
            let mut v = [false; 3];
            for (path, out) in BRIDGE_NF.iter().zip(v.iter_mut()) {
                // br_netfilter not loaded: no sysctl, and nothing to switch off.
                let Ok(s) = std::fs::read_to_string(path) else {
                    return None;
                };
                *out = s.trim() != "0";
            }
            let [iptables, ip6tables, arptables] = v;
            Some(BridgeNf {
                iptables,
                ip6tables,
                arptables,
            })
        })
    }

    /// The IPv6 switches of `names` (links without `/proc/sys/net/ipv6/conf/<name>` are
    /// left out: no IPv6 in this kernel) and the forwarding switches.
    fn sysctls(
        &self,
        names: &[String],
    ) -> Result<(BTreeMap<String, Ipv6Conf>, Option<Forwarding>), NetlinkError> {
        in_netns(self.netns.as_deref(), || {
            let read = |path: &str| -> Option<u8> {
                std::fs::read_to_string(path).ok()?.trim().parse().ok()
            };
            let mut conf = BTreeMap::new();
            for name in names {
                let key = |k: &str| format!("/proc/sys/net/ipv6/conf/{name}/{k}");
                let (Some(disable), Some(accept_ra), Some(autoconf)) = (
                    read(&key("disable_ipv6")),
                    read(&key("accept_ra")),
                    read(&key("autoconf")),
                ) else {
                    continue;
                };
                conf.insert(
                    name.clone(),
                    Ipv6Conf {
                        disable_ipv6: disable != 0,
                        accept_ra,
                        autoconf: autoconf != 0,
                    },
                );
            }
            let forwarding = match (
                read("/proc/sys/net/ipv4/ip_forward"),
                read("/proc/sys/net/ipv6/conf/all/forwarding"),
            ) {
                (Some(v4), Some(v6)) => Some(Forwarding {
                    ipv4: v4 != 0,
                    ipv6: v6 != 0,
                }),
                _ => None,
            };
            (conf, forwarding)
        })
    }

    fn create(
        &self,
        name: &str,
        kind: &Virtual,
        mtu: Option<u32>,
        op: &str,
    ) -> Result<(), NetlinkError> {
        let mut msg = match kind {
            Virtual::Bridge(o) => {
                let mut b = LinkMessageBuilder::<LinkBridge>::new(name)
                    .stp_state(stp_state(o.stp))
                    // Only the per-bridge knobs; the namespace-wide sysctl is
                    // SetBridgeNf's, as the kernel ORs the two.
                    .nf_call_iptables(false)
                    .nf_call_ip6tables(false)
                    .nf_call_arptables(false);
                // Off is the default; a kernel without CONFIG_BRIDGE_VLAN_FILTERING
                // refuses the attribute even to switch it off.
                if o.vlan_filtering {
                    b = b.vlan_filtering(true);
                }
                b.build()
            }
            Virtual::Vlan { parent, id } => {
                LinkVlan::new(name, self.index(parent, op)?, *id).build()
            }
        };
        if let Some(m) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(m));
        }
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(|e| nl_error(op, e))?;
        // The kernel ignores IFLA_IFALIAS when it creates a link.
        let index = self.index(name, op)?;
        let marked = self.set(
            LinkUnspec::new_with_index(index).alias(OWNER_ALIAS).build(),
            op,
        );
        if marked.is_err() {
            // Without its alias the link would be nobody's, and its name taken for good:
            // this step failed, so no undo will delete it.
            if let Err(e) = self.rt.block_on(self.handle.link().del(index).execute()) {
                tracing::error!(link = name, error = %e, "cannot delete a link whose alias could not be set");
            }
        }
        marked
    }
}

impl Netlink for Rtnetlink {
    fn observe(&mut self) -> Result<Observed, NetlinkError> {
        let h = &self.handle;
        let links: Vec<LinkMessage> = self
            .rt
            .block_on(h.link().get().execute().try_collect())
            .map_err(|e| nl_error("ip link show", e))?;
        let names: BTreeMap<u32, String> = links
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some((m.header.index, n.clone())),
                    _ => None,
                })
            })
            .collect();
        let addresses: Vec<AddressMessage> = self
            .rt
            .block_on(h.address().get().execute().try_collect())
            .map_err(|e| nl_error("ip addr show", e))?;
        let v4: Vec<RouteMessage> = self
            .rt
            .block_on(
                h.route()
                    .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                    .execute()
                    .try_collect(),
            )
            .map_err(|e| nl_error("ip -4 route show", e))?;
        let v6: Vec<RouteMessage> = self
            .rt
            .block_on(
                h.route()
                    .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
                    .execute()
                    .try_collect(),
            )
            .map_err(|e| nl_error("ip -6 route show", e))?;
        let (ipv6, forwarding) = self.sysctls(&names.values().cloned().collect::<Vec<_>>())?;
        let bridge_dump: Vec<LinkMessage> = self
            .rt
            .block_on(
                h.link()
                    .get()
                    .set_filter_mask(AddressFamily::Bridge, vec![LinkExtentMask::Brvlan])
                    .execute()
                    .try_collect(),
            )
            .map_err(|e| nl_error("bridge vlan show", e))?;
        let bridge_vlans = bridge_dump
            .iter()
            .filter_map(|m| {
                let vlans = parse_bridge_vlans(m);
                let name = names.get(&m.header.index)?;
                (!vlans.is_empty()).then(|| (name.clone(), vlans))
            })
            .collect();
        Ok(Observed {
            bridge_vlans,
            ipv6,
            forwarding,
            links: links.iter().map(|m| parse_link(m, &names)).collect(),
            addresses: addresses
                .iter()
                .filter_map(|m| parse_address(m, &names))
                .collect(),
            routes: v4
                .iter()
                .filter_map(|m| parse_route(m, &names, true))
                .chain(v6.iter().filter_map(|m| parse_route(m, &names, false)))
                .collect(),
            bridge_nf: self.bridge_nf()?,
        })
    }

    fn execute(&mut self, action: &Action) -> Result<(), NetlinkError> {
        let op = action.to_string();
        let op = op.as_str();
        let h = &self.handle;
        match action {
            Action::Create { name, kind, mtu } => self.create(name, kind, *mtu, op),
            Action::Delete { name, .. } => {
                let index = self.index(name, op)?;
                self.rt
                    .block_on(h.link().del(index).execute())
                    .map_err(|e| nl_error(op, e))
            }
            Action::Rename { from, to } => {
                let index = self.index(from, op)?;
                self.set(
                    LinkUnspec::new_with_index(index).name(to.clone()).build(),
                    op,
                )
            }
            Action::SetAlias { link, alias, .. } => {
                let index = self.index(link, op)?;
                // An empty alias clears it.
                let alias = alias.clone().unwrap_or_default();
                self.set(LinkUnspec::new_with_index(index).alias(alias).build(), op)
            }
            Action::SetUp { link, up } => {
                let index = self.index(link, op)?;
                let b = LinkUnspec::new_with_index(index);
                self.set(if *up { b.up() } else { b.down() }.build(), op)
            }
            Action::SetMtu { link, mtu, .. } => {
                let index = self.index(link, op)?;
                self.set(LinkUnspec::new_with_index(index).mtu(*mtu).build(), op)
            }
            Action::SetMaster { link, master, .. } => {
                let index = self.index(link, op)?;
                let b = LinkUnspec::new_with_index(index);
                let b = match master {
                    Some(m) => b.controller(self.index(m, op)?),
                    None => b.nocontroller(),
                };
                self.set(b.build(), op)
            }
            Action::SetBridge {
                link,
                opts,
                previous,
            } => {
                let index = self.index(link, op)?;
                let msg = bridge_change_message(link, index, opts, previous);
                self.rt
                    .block_on(h.link().change(msg).execute())
                    .map_err(|e| nl_error(op, e))
            }
            Action::AddAddress { link, net } => {
                let index = self.index(link, op)?;
                self.rt
                    .block_on(
                        h.address()
                            .add(index, net.addr(), net.prefix_len())
                            .execute(),
                    )
                    .map_err(|e| nl_error(op, e))
            }
            Action::RemoveAddress { link, net } => {
                let index = self.index(link, op)?;
                let found: Vec<AddressMessage> = self
                    .rt
                    .block_on(
                        h.address()
                            .get()
                            .set_link_index_filter(index)
                            .set_address_filter(net.addr())
                            .set_prefix_length_filter(net.prefix_len())
                            .execute()
                            .try_collect(),
                    )
                    .map_err(|e| nl_error(op, e))?;
                if found.is_empty() {
                    return Err(NetlinkError::errno(op, EADDRNOTAVAIL));
                }
                for m in found {
                    self.rt
                        .block_on(h.address().del(m).execute())
                        .map_err(|e| nl_error(op, e))?;
                }
                Ok(())
            }
            Action::AddRoute(r) | Action::RemoveRoute(r) => {
                let dev = r
                    .dev
                    .as_deref()
                    .ok_or_else(|| NetlinkError::other(op, "a route without a link"))?;
                let msg = route_message(r, self.index(dev, op)?, op)?;
                let done = if matches!(action, Action::AddRoute(_)) {
                    self.rt.block_on(h.route().add(msg).execute())
                } else {
                    self.rt.block_on(h.route().del(msg).execute())
                };
                done.map_err(|e| nl_error(op, e))
            }
            Action::AddBridgeVlan {
                link,
                vlan,
                on_self,
            } => {
                let msg = bridge_vlan_message(self.index(link, op)?, vlan, *on_self);
                self.set(msg, op)
            }
            Action::RemoveBridgeVlan {
                link,
                vlan,
                on_self,
            } => {
                let msg = bridge_vlan_message(self.index(link, op)?, vlan, *on_self);
                self.rt
                    .block_on(h.link().del_with_message(msg).execute())
                    .map_err(|e| nl_error(op, e))
            }
            Action::SetBridgeNf { value, .. } => in_netns(self.netns.as_deref(), || {
                let values = [value.iptables, value.ip6tables, value.arptables];
                for (path, on) in BRIDGE_NF.iter().zip(values) {
                    std::fs::write(path, if on { "1\n" } else { "0\n" }).map_err(|e| {
                        NetlinkError {
                            operation: op.to_string(),
                            errno: e.raw_os_error(),
                            message: format!("{path}: {e}"),
                        }
                    })?;
                }
                Ok(())
            })?,
            Action::SetIpv6 { link, value, .. } => {
                // accept_ra before disable_ipv6: re-enabled IPv6 solicits routers at once,
                // with the accept_ra it finds.
                let writes = [
                    ("accept_ra", value.accept_ra),
                    ("autoconf", u8::from(value.autoconf)),
                    ("disable_ipv6", u8::from(value.disable_ipv6)),
                ]
                .map(|(k, v)| (format!("/proc/sys/net/ipv6/conf/{link}/{k}"), v));
                in_netns(self.netns.as_deref(), || write_sysctls(op, &writes))?
            }
            Action::SetForwarding { value, .. } => {
                let writes = [
                    (
                        "/proc/sys/net/ipv4/ip_forward".to_string(),
                        u8::from(value.ipv4),
                    ),
                    (
                        "/proc/sys/net/ipv6/conf/all/forwarding".to_string(),
                        u8::from(value.ipv6),
                    ),
                ];
                in_netns(self.netns.as_deref(), || write_sysctls(op, &writes))?
            }
        }
    }
}

fn write_sysctls(op: &str, writes: &[(String, u8)]) -> Result<(), NetlinkError> {
    for (path, v) in writes {
        std::fs::write(path, format!("{v}\n")).map_err(|e| NetlinkError {
            operation: op.to_string(),
            errno: e.raw_os_error(),
            message: format!("{path}: {e}"),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::state::PROTO_STATIC;

    fn names() -> BTreeMap<u32, String> {
        [(7, "br-lan".to_string()), (8, "wan".to_string())]
            .into_iter()
            .collect()
    }

    /// The host kernel of the namespace tests cannot make VLANs: the parser sees one here.
    #[test]
    fn a_vlan_message_reads_back_as_its_id_and_parent() {
        let mut msg = LinkVlan::new("iot", 7, 20).mtu(1400).build();
        msg.header.index = 9;
        msg.attributes
            .push(LinkAttribute::IfAlias(OWNER_ALIAS.into()));
        let l = parse_link(&msg, &names());
        assert_eq!(l.name, "iot");
        assert_eq!(l.index, 9);
        assert_eq!(l.kind.as_deref(), Some("vlan"));
        assert_eq!(l.vlan, Some((20, "br-lan".to_string())));
        assert_eq!(l.mtu, 1400);
        assert!(l.created());
        assert_eq!(
            l.as_virtual(),
            Some(Virtual::Vlan {
                parent: "br-lan".into(),
                id: 20
            })
        );
    }

    #[test]
    fn a_vlan_filtering_bridge_message_reads_back_with_its_options() {
        let msg = LinkMessageBuilder::<LinkBridge>::new("br-lan")
            .vlan_filtering(true)
            .stp_state(stp_state(true))
            .build();
        let l = parse_link(&msg, &names());
        assert_eq!(
            l.bridge,
            Some(BridgeOpts {
                vlan_filtering: true,
                stp: true
            })
        );
    }

    #[test]
    fn a_bridge_change_names_no_link_and_carries_only_what_changes() {
        let on = BridgeOpts {
            vlan_filtering: true,
            stp: false,
        };
        let msg = bridge_change_message("br0", 7, &BridgeOpts::default(), &on);
        assert_eq!(msg.header.index, 7);
        assert!(
            !msg.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(_))),
            "{msg:?}"
        );
        let mut renamed = msg.clone();
        renamed.attributes.push(LinkAttribute::IfName("br0".into()));
        let l = parse_link(&renamed, &names());
        assert_eq!(l.bridge, Some(BridgeOpts::default()));
        let infos = format!("{:?}", msg.attributes);
        assert!(infos.contains("VlanFiltering(false)"), "{infos}");
        assert!(!infos.contains("StpState"), "{infos}");
    }

    #[test]
    fn routes_read_back_as_they_were_written() {
        for (r, v4) in [
            (
                Route {
                    dst: "198.51.100.0/24".parse().unwrap(),
                    gateway: Some("203.0.113.254".parse().unwrap()),
                    dev: Some("wan".into()),
                    metric: 10,
                    protocol: PROTO_STATIC,
                },
                true,
            ),
            (
                Route {
                    dst: "::/0".parse().unwrap(),
                    gateway: Some("2001:db8::fe".parse().unwrap()),
                    dev: Some("wan".into()),
                    metric: 1024,
                    protocol: PROTO_STATIC,
                },
                false,
            ),
        ] {
            let msg = route_message(&r, 8, "test").unwrap();
            assert_eq!(parse_route(&msg, &names(), v4), Some(r));
        }
    }
}
