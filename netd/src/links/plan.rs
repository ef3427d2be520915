//! The pure part: what the config asks for ([`desired`]) against what the kernel holds
//! ([`Observed`]), turned into ordered [`Action`]s by [`plan`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use appliance::Config;
use appliance::model::{Addressed, Ipv4Mode, Ipv6Mode};
use ipnet::IpNet;

use super::action::Action;
use super::state::{
    BridgeNf, BridgeVlan, Forwarding, Ipv6Conf, Link, Mac, NIC_ALIAS_PREFIX, Observed,
    PROTO_STATIC, Route, Virtual,
};

/// How a NIC of the config is found among the kernel's links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicMatch {
    /// By kernel name, or by the name it had when netd adopted (and renamed) it.
    Device(String),
    /// By burnt-in MAC (`IFLA_PERM_ADDRESS`), else by current MAC.
    Mac(Mac),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Nic(NicMatch),
    Virtual(Virtual),
}

/// A link as the config wants it. `name` is the config key, which is the kernel name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredLink {
    pub name: String,
    pub role: Role,
    pub mtu: Option<u32>,
    /// The bridge this link is a port of.
    pub master: Option<String>,
    /// Static addresses.
    pub addresses: Vec<IpNet>,
    /// IPv4 addresses are netd's to add and remove (not with `ipv4 = "dhcp"`, where the
    /// DHCP client owns them).
    pub manage_v4: bool,
    /// IPv6 addresses, link-local aside, are netd's (not with `ipv6 = "slaac"`).
    pub manage_v6: bool,
    /// The link's IPv6 switches: SLAAC, static only, or IPv6 off.
    pub ipv6: Ipv6Conf,
    /// The port's own VLANs on its bridge (`[bridges.<b>.ports.<link>]`); `None`: every
    /// VLAN of the bridge, tagged.
    pub port_vlans: Option<PortVlans>,
}

/// A port's VLANs on a `vlan_filtering` bridge, as the config gives them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortVlans {
    /// The port's PVID, carried untagged (an access port).
    pub untagged: Option<u16>,
    /// The ids carried tagged; `None`: every VLAN of the bridge, or none with `untagged`.
    pub tagged: Option<BTreeSet<u16>>,
}

/// The VLAN table netd wants on a bridge (its `self` entries) or on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanTable {
    /// The entries netd adds and keeps, flags included.
    pub entries: BTreeSet<BridgeVlan>,
    /// The kernel's default entry ([`BridgeVlan::KERNEL_DEFAULT`]) belongs to the table:
    /// on every link but an access port, which is in its own VLAN only.
    pub kernel_default: bool,
    /// The entries go on the bridge itself (`self`).
    pub on_self: bool,
    /// A `vlan_filtering` bridge or a port of one.
    pub filtering: bool,
}

impl VlanTable {
    /// What the kernel gives a link: its default entry, nothing of netd's.
    fn kernel() -> Self {
        Self {
            entries: BTreeSet::new(),
            kernel_default: true,
            on_self: false,
            filtering: false,
        }
    }
}

/// The links, addresses and routes a config asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    /// NICs, then bridges, then VLANs.
    pub links: Vec<DesiredLink>,
    pub routes: Vec<Route>,
    /// Forwarding the config needs: switched on when off, never off (another part of
    /// the system may route too).
    pub forwarding: Forwarding,
}

impl Desired {
    fn link(&self, name: &str) -> Option<&DesiredLink> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The VLAN table link `d` must have. On a `vlan_filtering` bridge, a frame passes
    /// only in VLANs of both the port it enters by and the link it leaves by, and the
    /// bridge's own upper links (its VLAN sub-interfaces) sit behind the bridge's `self`
    /// entries: so each id of a VLAN sub-interface on such a bridge goes on the bridge,
    /// tagged, and on every port, tagged unless the port's own list says otherwise (an
    /// access port has its one VLAN untagged as PVID, instead of the kernel's VLAN 1).
    pub fn bridge_vlans(&self, d: &DesiredLink) -> VlanTable {
        let filtering = |b: &str| {
            matches!(
                self.link(b).map(|l| &l.role),
                Some(Role::Virtual(Virtual::Bridge(o))) if o.vlan_filtering
            )
        };
        let ids_on = |b: &str| -> BTreeSet<u16> {
            self.links
                .iter()
                .filter_map(|l| match &l.role {
                    Role::Virtual(Virtual::Vlan { parent, id }) if parent == b => Some(*id),
                    _ => None,
                })
                .collect()
        };
        let tagged = |ids: BTreeSet<u16>| ids.into_iter().map(BridgeVlan::tagged).collect();
        if matches!(d.role, Role::Virtual(Virtual::Bridge(_))) {
            let filtering = filtering(&d.name);
            return VlanTable {
                entries: if filtering {
                    tagged(ids_on(&d.name))
                } else {
                    BTreeSet::new()
                },
                kernel_default: true,
                on_self: true,
                filtering,
            };
        }
        match &d.master {
            Some(b) if filtering(b) => {
                let own = d.port_vlans.clone().unwrap_or_default();
                let ids = match (&own.tagged, own.untagged) {
                    (Some(t), _) => t.clone(),
                    (None, Some(_)) => BTreeSet::new(),
                    (None, None) => ids_on(b),
                };
                let mut entries: BTreeSet<BridgeVlan> = tagged(ids);
                if let Some(u) = own.untagged {
                    entries.retain(|v| v.vid != u);
                    entries.insert(BridgeVlan::access(u));
                }
                VlanTable {
                    entries,
                    kernel_default: own.untagged.is_none(),
                    on_self: false,
                    filtering: true,
                }
            }
            _ => VlanTable::kernel(),
        }
    }
}

/// Why no plan could be made. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "interface {link:?}: no network card with {by}; `ip link` lists the cards, fix [interfaces.{link}]"
    )]
    NicNotFound { link: String, by: String },
    #[error(
        "interface {link:?}: MAC {mac} belongs to several links ({}); match this card by device instead",
        candidates.join(", ")
    )]
    NicAmbiguous {
        link: String,
        mac: Mac,
        candidates: Vec<String>,
    },
    #[error(
        "network card {nic:?} is matched by both [interfaces.{first}] and [interfaces.{second}]; each card backs one interface"
    )]
    NicClaimedTwice {
        nic: String,
        first: String,
        second: String,
    },
    #[error(
        "link name {name:?} is taken by {holder}, which netd does not own; rename or delete that link, or choose another key"
    )]
    NameTaken { name: String, holder: String },
    #[error(
        "[interfaces.{first}] and [interfaces.{second}] make network cards {first_now:?} and {second_now:?} swap names, which needs a temporary name: rename one card by hand first (`ip link set {second_now} down name <temporary>`)"
    )]
    NamesSwapped {
        first: String,
        first_now: String,
        second: String,
        second_now: String,
    },
    #[error(
        "route {route} is already in the main table as `{holder}`, which netd did not add; delete it or change the route's metric"
    )]
    RouteTaken { route: String, holder: String },
    #[error("{link:?}: {reason}")]
    Invalid { link: String, reason: String },
}

fn default_metric(dst: &IpNet) -> u32 {
    // The kernel gives IPv6 routes added without a metric IP6_RT_PRIO_USER.
    if matches!(dst, IpNet::V6(_)) { 1024 } else { 0 }
}

/// The links section of `cfg` as [`Desired`]. The config is validated already; what the
/// validator guarantees (a NIC has a device or a MAC) is still checked, not assumed.
pub fn desired(cfg: &Config) -> Result<Desired, PlanError> {
    let mut masters: BTreeMap<&str, &str> = BTreeMap::new();
    let mut ports: BTreeMap<&str, PortVlans> = BTreeMap::new();
    for (bridge, b) in &cfg.bridges {
        for m in &b.members {
            masters.insert(m.as_str(), bridge.as_str());
        }
        for (port, v) in &b.ports {
            ports.insert(
                port.as_str(),
                PortVlans {
                    untagged: v.untagged.map(|u| u.get()),
                    tagged: v
                        .tagged
                        .as_ref()
                        .map(|t| t.iter().map(|id| id.get()).collect()),
                },
            );
        }
    }
    let mut out = Desired::default();
    // Links that carry each family: a router forwards once two of them do.
    let (mut with_v4, mut with_v6) = (usize::from(!cfg.wireguard.is_empty()), 0usize);
    let mut add = |name: &str, role: Role, a: &dyn Addressed| {
        let v4 = a.ipv4_mode();
        let v6 = a.ipv6_mode();
        with_v4 += usize::from(v4 != Ipv4Mode::None);
        with_v6 += usize::from(v6 != Ipv6Mode::None);
        let ipv6 = match (a.ipv6(), v6) {
            (Some(Ipv6Mode::None), _) => Ipv6Conf::DISABLED,
            (_, Ipv6Mode::Slaac) => Ipv6Conf::SLAAC,
            // Left unsaid, IPv6 stays link-local only: an advertisement on the link (a
            // rogue router on the LAN) must not configure the router.
            _ => Ipv6Conf::STATIC,
        };
        let addresses = a
            .addresses()
            .iter()
            .filter(|c| {
                if c.is_ipv4() {
                    v4 == Ipv4Mode::Static
                } else {
                    v6 == Ipv6Mode::Static
                }
            })
            .map(|c| c.net())
            .collect();
        for r in a.routes() {
            let dst = r.to.net().trunc();
            out.routes.push(Route {
                metric: r.metric.unwrap_or_else(|| default_metric(&dst)),
                dst,
                gateway: Some(r.via),
                dev: Some(name.to_string()),
                protocol: PROTO_STATIC,
            });
        }
        out.links.push(DesiredLink {
            name: name.to_string(),
            role,
            mtu: a.mtu().map(|m| u32::from(m.get())),
            master: masters.get(name).map(|m| m.to_string()),
            port_vlans: ports.get(name).cloned(),
            addresses,
            manage_v4: v4 != Ipv4Mode::Dhcp,
            manage_v6: v6 != Ipv6Mode::Slaac,
            ipv6,
        });
    };
    for (name, i) in &cfg.interfaces {
        let by = match (&i.device, &i.mac) {
            (Some(d), None) => NicMatch::Device(d.as_str().to_string()),
            (None, Some(m)) => NicMatch::Mac(Mac(m.octets())),
            _ => {
                return Err(PlanError::Invalid {
                    link: name.to_string(),
                    reason: "an interface needs exactly one of device and mac".into(),
                });
            }
        };
        add(name.as_str(), Role::Nic(by), i);
    }
    for (name, b) in &cfg.bridges {
        let opts = super::state::BridgeOpts {
            vlan_filtering: b.vlan_filtering,
            stp: b.stp,
        };
        add(name.as_str(), Role::Virtual(Virtual::Bridge(opts)), b);
    }
    for (name, v) in &cfg.vlans {
        let kind = Virtual::Vlan {
            parent: v.parent.as_str().to_string(),
            id: v.id.get(),
        };
        add(name.as_str(), Role::Virtual(kind), v);
    }
    out.forwarding = Forwarding {
        ipv4: with_v4 >= 2,
        ipv6: with_v6 >= 2,
    };
    // Default routes of static uplinks.
    for (name, i) in &cfg.interfaces {
        let gateways = [
            i.gateway.map(|g| {
                (
                    IpNet::from(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                    IpAddr::V4(g),
                )
            }),
            i.gateway6.map(|g| {
                (
                    IpNet::from(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
                    IpAddr::V6(g),
                )
            }),
        ];
        for (any, gw) in gateways.into_iter().flatten() {
            let dst = any.trunc();
            let dst = IpNet::new(dst.addr(), 0).unwrap_or(dst);
            out.routes.push(Route {
                metric: default_metric(&dst),
                dst,
                gateway: Some(gw),
                dev: Some(name.as_str().to_string()),
                protocol: PROTO_STATIC,
            });
        }
    }
    Ok(out)
}

fn is_link_local(net: &IpNet) -> bool {
    match net.addr() {
        IpAddr::V6(a) => a.segments().first().is_some_and(|s| s & 0xffc0 == 0xfe80),
        IpAddr::V4(_) => false,
    }
}

/// What happens to an observed link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// A NIC of the config, maybe renamed.
    Claimed,
    /// A bridge or VLAN netd created and still wants.
    Kept,
    /// A bridge or VLAN netd created and no longer wants (or wants as another kind).
    Deleted,
    /// A NIC netd adopted that left the config: addresses removed, down, alias cleared.
    Released,
    /// Not netd's: never touched.
    Foreign,
}

/// Orders the changes that take the kernel from `observed` to `desired`.
///
/// Order: stale routes; links that go away (addresses, ports, down, delete); NIC renames
/// and adoption; bridges; VLANs (a VLAN may ride on a bridge, and be a bridge port);
/// masters; MTUs (NICs, bridges, then VLANs, which can be at most their parent's);
/// addresses (stale first, so one can move between links); bridge netfilter off; links
/// up; missing routes (a gateway is only reachable once its link is up and addressed).
pub fn plan(desired: &Desired, observed: &Observed) -> Result<Vec<Action>, PlanError> {
    plan_after(desired, observed, None)
}

/// [`plan`], knowing what the config applied before wanted (`previous`): on a link whose
/// family is no longer netd's (`ipv4 = "dhcp"`, `ipv6 = "slaac"`), the static addresses
/// the previous config put there go, as they would if the link had stayed static. Only
/// those: what the DHCP client or SLAAC added stays theirs.
pub fn plan_after(
    desired: &Desired,
    observed: &Observed,
    previous: Option<&Desired>,
) -> Result<Vec<Action>, PlanError> {
    // NICs of the config, matched among the kernel's links.
    let mut claimed: BTreeMap<&str, &str> = BTreeMap::new(); // kernel name -> config key
    for d in &desired.links {
        let Role::Nic(by) = &d.role else { continue };
        let nic = |l: &&Link| !l.is_virtual() && !l.loopback;
        let found = match by {
            NicMatch::Device(dev) => observed
                .links
                .iter()
                .filter(nic)
                .find(|l| l.adopted_as() == Some(dev.as_str()))
                .or_else(|| observed.links.iter().filter(nic).find(|l| l.name == *dev))
                .ok_or_else(|| PlanError::NicNotFound {
                    link: d.name.clone(),
                    by: format!("the name {dev}"),
                })?,
            NicMatch::Mac(mac) => {
                let hits: Vec<&Link> = observed
                    .links
                    .iter()
                    .filter(nic)
                    .filter(|l| l.perm_mac.or(l.mac) == Some(*mac))
                    .collect();
                match hits.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(PlanError::NicNotFound {
                            link: d.name.clone(),
                            by: format!("MAC {mac}"),
                        });
                    }
                    many => {
                        return Err(PlanError::NicAmbiguous {
                            link: d.name.clone(),
                            mac: *mac,
                            candidates: many.iter().map(|l| l.name.clone()).collect(),
                        });
                    }
                }
            }
        };
        if let Some(first) = claimed.insert(&found.name, &d.name) {
            return Err(PlanError::NicClaimedTwice {
                nic: found.name.clone(),
                first: first.to_string(),
                second: d.name.clone(),
            });
        }
    }

    let fate = |l: &Link| -> Fate {
        if claimed.contains_key(l.name.as_str()) {
            return Fate::Claimed;
        }
        if l.created() && l.is_virtual() {
            let same = match (desired.link(&l.name).map(|d| &d.role), l.as_virtual()) {
                (Some(Role::Virtual(Virtual::Bridge(_))), Some(Virtual::Bridge(_))) => true,
                (
                    Some(Role::Virtual(Virtual::Vlan { parent, id })),
                    Some(Virtual::Vlan { parent: p, id: i }),
                ) => {
                    // The parent may be a NIC that this plan renames.
                    let p = claimed.get(p.as_str()).copied().unwrap_or(p.as_str());
                    *id == i && parent == p
                }
                _ => false,
            };
            return if same { Fate::Kept } else { Fate::Deleted };
        }
        if l.adopted_as().is_some() && !l.is_virtual() {
            return Fate::Released;
        }
        Fate::Foreign
    };
    let fates: BTreeMap<&str, Fate> = observed
        .links
        .iter()
        .map(|l| (l.name.as_str(), fate(l)))
        .collect();
    let fate_of = |name: &str| fates.get(name).copied().unwrap_or(Fate::Foreign);
    // The name a link has once the renames are done.
    let canon = |name: &str| -> String { claimed.get(name).copied().unwrap_or(name).to_string() };

    // A released NIC that holds a name the config needs (the built-in default named
    // eth1 `lan`; the user's config gives `lan` to another card) goes back to the name
    // it had before netd adopted it, when that name is free.
    let mut renamed_back: BTreeMap<&str, &str> = BTreeMap::new();
    for l in &observed.links {
        if fate_of(&l.name) != Fate::Released || desired.link(&l.name).is_none() {
            continue;
        }
        if let Some(orig) = l.adopted_as()
            && orig != l.name
            && observed.link(orig).is_none()
            && desired.link(orig).is_none()
        {
            renamed_back.insert(&l.name, orig);
        }
    }

    // Names the config needs must be free, or held by what this plan removes or renames.
    for d in &desired.links {
        let Some(holder) = observed.link(&d.name) else {
            continue;
        };
        let ok = match fate_of(&holder.name) {
            // Renamed away first (see `rename_order`), or kept by the same interface.
            Fate::Claimed => true,
            Fate::Kept => true,
            Fate::Deleted => true,
            Fate::Released => renamed_back.contains_key(holder.name.as_str()),
            Fate::Foreign => false,
        };
        if !ok {
            let kind = holder.kind.as_deref().unwrap_or("network card");
            return Err(PlanError::NameTaken {
                name: d.name.clone(),
                holder: format!("the {kind} link {:?}", holder.name),
            });
        }
    }
    let nic_order = rename_order(desired, observed, &claimed)?;

    let mut actions = Vec::new();
    let gone = |name: &str| matches!(fate_of(name), Fate::Deleted | Fate::Released);
    // The bridge a port is in once the links that go are gone (renamed to its new name).
    let master_after_teardown = |l: &Link| -> Option<String> {
        l.master
            .as_deref()
            .filter(|m| !gone(m) && !gone(&l.name))
            .map(canon)
    };
    // Whether a link's VLAN table survives the plan: a bridge that stays, or a port that
    // stays in the same bridge (one that leaves loses its table, one that joins gets the
    // kernel's default).
    let table_stays = |l: &Link| -> bool {
        match fate_of(&l.name) {
            Fate::Kept if l.bridge.is_some() => true,
            Fate::Claimed | Fate::Kept => {
                let want = desired.link(&canon(&l.name)).and_then(|d| d.master.clone());
                want.is_some() && master_after_teardown(l) == want
            }
            _ => false,
        }
    };
    // The VLAN table netd wants on the link that becomes `l`.
    let table_of = |l: &Link| -> VlanTable {
        desired
            .link(&canon(&l.name))
            .map(|d| desired.bridge_vlans(d))
            .unwrap_or_else(VlanTable::kernel)
    };
    // Whether entry `v` of `l`'s table stays: the kernel's default where it belongs (a
    // link leaving its bridge takes it along), netd's own where the table survives.
    let keeps = |l: &Link, t: &VlanTable, v: &BridgeVlan| -> bool {
        (*v == BridgeVlan::KERNEL_DEFAULT && t.kernel_default)
            || (table_stays(l) && t.entries.contains(v))
    };
    // NICs that are up and get renamed: the kernel wants them down for that.
    let renamed_up: BTreeSet<&str> = observed
        .links
        .iter()
        .filter(|l| l.up && claimed.get(l.name.as_str()).is_some_and(|k| *k != l.name))
        .map(|l| l.name.as_str())
        .collect();

    // NICs that go down to be renamed lose their routes and IPv6 addresses in the
    // kernel: remove them explicitly (so that an undo puts them back) and add the
    // desired ones again once the NIC is up.
    let flushed = |link: &str, net: &IpNet| -> bool {
        renamed_up.contains(link) && matches!(net, IpNet::V6(_)) && !is_link_local(net)
    };

    // 0. Routes: netd's are `proto static` through links netd owns.
    let managed = |r: &Route| {
        r.protocol == PROTO_STATIC
            && r.dev.as_deref().is_some_and(|d| {
                matches!(
                    fate_of(d),
                    Fate::Claimed | Fate::Kept | Fate::Deleted | Fate::Released
                )
            })
    };
    let mut kept_routes = Vec::new();
    for r in observed.routes.iter().filter(|r| managed(r)) {
        let dev = r.dev.as_deref().unwrap_or_default();
        let mut c = r.clone();
        c.dev = Some(canon(dev));
        if gone(dev) || renamed_up.contains(dev) || !desired.routes.contains(&c) {
            actions.push(Action::RemoveRoute(r.clone()));
        } else {
            kept_routes.push(c);
        }
    }
    for want in &desired.routes {
        if kept_routes.contains(want) {
            continue;
        }
        if let Some(holder) = observed
            .routes
            .iter()
            .find(|r| !managed(r) && r.dst == want.dst && r.metric == want.metric)
        {
            return Err(PlanError::RouteTaken {
                route: want.to_string(),
                holder: holder.to_string(),
            });
        }
    }

    // 0b. Bridge VLANs netd no longer wants, on bridges and ports netd owns, and those of
    // links that leave their bridge (which drops them anyway; removed here so that an
    // undo puts them back). The kernel's default entry stays, except on an access port.
    for l in &observed.links {
        if fate_of(&l.name) == Fate::Foreign {
            continue;
        }
        let t = table_of(l);
        for v in observed.bridge_vlans_of(&l.name) {
            if !keeps(l, &t, v) {
                actions.push(Action::RemoveBridgeVlan {
                    link: l.name.clone(),
                    vlan: *v,
                    on_self: l.bridge.is_some(),
                });
            }
        }
    }

    // 1. Links that go away. VLANs first: they may ride on a deleted bridge.
    let mut leaving: Vec<&Link> = observed.links.iter().filter(|l| gone(&l.name)).collect();
    leaving.sort_by_key(|l| match l.kind.as_deref() {
        Some("vlan") => 0,
        Some("bridge") => 1,
        _ => 2,
    });
    // Ports of leaving bridges, and leaving ports, leave their bridge first, each once.
    for l in &observed.links {
        if let Some(m) = &l.master
            && (gone(m) || gone(&l.name))
        {
            actions.push(Action::SetMaster {
                link: l.name.clone(),
                master: None,
                previous: Some(m.clone()),
            });
        }
    }
    for l in leaving {
        for a in observed.addresses.iter().filter(|a| a.link == l.name) {
            if !is_link_local(&a.net) {
                actions.push(Action::RemoveAddress {
                    link: l.name.clone(),
                    net: a.net,
                });
            }
        }
        if l.up {
            actions.push(Action::SetUp {
                link: l.name.clone(),
                up: false,
            });
        }
        match (fate_of(&l.name), l.as_virtual()) {
            (Fate::Deleted, Some(kind)) => actions.push(Action::Delete {
                name: l.name.clone(),
                kind,
                mtu: Some(l.mtu),
            }),
            _ => {
                actions.push(Action::SetAlias {
                    link: l.name.clone(),
                    alias: None,
                    previous: l.alias.clone(),
                });
                if let Some(orig) = renamed_back.get(l.name.as_str()) {
                    actions.push(Action::Rename {
                        from: l.name.clone(),
                        to: orig.to_string(),
                    });
                }
            }
        }
    }

    // 2. NICs: rename to the config key (down first), mark as adopted.
    let mut up_now: BTreeMap<String, bool> = BTreeMap::new();
    for d in nic_order {
        let Some(l) = observed
            .links
            .iter()
            .find(|l| claimed.get(l.name.as_str()) == Some(&d.name.as_str()))
        else {
            continue;
        };
        let mut up = l.up;
        if l.name != d.name {
            for a in observed.addresses.iter().filter(|a| a.link == l.name) {
                if flushed(&l.name, &a.net) {
                    actions.push(Action::RemoveAddress {
                        link: l.name.clone(),
                        net: a.net,
                    });
                }
            }
            if l.up {
                actions.push(Action::SetUp {
                    link: l.name.clone(),
                    up: false,
                });
                up = false;
            }
            actions.push(Action::Rename {
                from: l.name.clone(),
                to: d.name.clone(),
            });
        }
        if l.adopted_as().is_none() {
            actions.push(Action::SetAlias {
                link: d.name.clone(),
                alias: Some(format!("{NIC_ALIAS_PREFIX}{}", l.name)),
                previous: l.alias.clone(),
            });
        }
        up_now.insert(d.name.clone(), up);
    }

    // 3. and 4. Bridges, then VLANs.
    let mut created: BTreeSet<&str> = BTreeSet::new();
    for pass_bridges in [true, false] {
        for d in &desired.links {
            let Role::Virtual(kind) = &d.role else {
                continue;
            };
            if matches!(kind, Virtual::Bridge(_)) != pass_bridges {
                continue;
            }
            let existing = observed
                .link(&d.name)
                .filter(|l| fate_of(&l.name) == Fate::Kept);
            match existing {
                Some(l) => {
                    if let (Virtual::Bridge(want), Some(have)) = (kind, l.bridge)
                        && *want != have
                    {
                        actions.push(Action::SetBridge {
                            link: d.name.clone(),
                            opts: *want,
                            previous: have,
                        });
                    }
                    up_now.insert(d.name.clone(), l.up);
                }
                None => {
                    actions.push(Action::Create {
                        name: d.name.clone(),
                        kind: kind.clone(),
                        mtu: None,
                    });
                    created.insert(&d.name);
                    up_now.insert(d.name.clone(), false);
                }
            }
        }
    }
    // The observed link that becomes desired link `name`, if it is not created afresh.
    let current = |name: &str| -> Option<&Link> {
        if created.contains(name) {
            return None;
        }
        observed.links.iter().find(|l| {
            matches!(fate_of(&l.name), Fate::Claimed | Fate::Kept) && canon(&l.name) == name
        })
    };

    // 5. Masters.
    for d in &desired.links {
        let have = current(&d.name).and_then(master_after_teardown);
        if have != d.master {
            actions.push(Action::SetMaster {
                link: d.name.clone(),
                master: d.master.clone(),
                previous: have,
            });
        }
    }

    // 5b. Bridge VLANs: the ids of the VLAN sub-interfaces of a `vlan_filtering` bridge,
    // on the bridge itself and on each of its ports (the ports are in by now), as each
    // port's own list says.
    for d in &desired.links {
        let t = desired.bridge_vlans(d);
        let on_self = t.on_self;
        // What the table holds after step 0b: what stayed of a surviving table; on a
        // bridge made now or a port that joined, the kernel's default entry (a kernel
        // without VLAN tables makes no filtering bridge, so `filtering` says it has them).
        let (kept, tables): (Vec<BridgeVlan>, bool) = match current(&d.name) {
            Some(l) if table_stays(l) => {
                let have = observed.bridge_vlans_of(&l.name);
                let kept = have.iter().filter(|v| keeps(l, &t, v)).copied().collect();
                (kept, t.filtering || !have.is_empty())
            }
            _ if t.filtering => (vec![BridgeVlan::KERNEL_DEFAULT], true),
            _ => (Vec::new(), false),
        };
        if !t.kernel_default && kept.contains(&BridgeVlan::KERNEL_DEFAULT) {
            // An access port that just joined leaves VLAN 1 before it gets its PVID.
            actions.push(Action::RemoveBridgeVlan {
                link: d.name.clone(),
                vlan: BridgeVlan::KERNEL_DEFAULT,
                on_self,
            });
        }
        if t.kernel_default && tables && !kept.iter().any(|v| v.pvid) {
            // Back from an access port (or the PVID deleted by hand): untagged frames
            // join VLAN 1 again, as on any other port.
            actions.push(Action::AddBridgeVlan {
                link: d.name.clone(),
                vlan: BridgeVlan::KERNEL_DEFAULT,
                on_self,
            });
        }
        for vlan in &t.entries {
            if !kept.contains(vlan) {
                actions.push(Action::AddBridgeVlan {
                    link: d.name.clone(),
                    vlan: *vlan,
                    on_self,
                });
            }
        }
    }

    // 6. MTUs: NICs, bridges, VLANs (the order of `desired.links`).
    for d in &desired.links {
        let Some(mtu) = d.mtu else { continue };
        match current(&d.name) {
            Some(l) if l.mtu == mtu => {}
            l => actions.push(Action::SetMtu {
                link: d.name.clone(),
                mtu,
                previous: l.map(|l| l.mtu),
            }),
        }
    }

    // 7. Addresses: stale ones everywhere first, then the missing ones.
    let mut adds = Vec::new();
    for d in &desired.links {
        let have: Vec<IpNet> = match current(&d.name) {
            Some(l) => observed
                .addresses
                .iter()
                .filter(|a| a.link == l.name && !flushed(&l.name, &a.net))
                .map(|a| a.net)
                .collect(),
            None => Vec::new(),
        };
        for net in &have {
            let managed = match net {
                IpNet::V4(_) => d.manage_v4,
                IpNet::V6(_) => d.manage_v6 && !is_link_local(net),
            };
            let formerly_static = || {
                previous
                    .and_then(|p| p.links.iter().find(|l| l.name == d.name))
                    .is_some_and(|l| l.addresses.contains(net))
            };
            if (managed || formerly_static()) && !d.addresses.contains(net) {
                actions.push(Action::RemoveAddress {
                    link: d.name.clone(),
                    net: *net,
                });
            }
        }
        for net in &d.addresses {
            if !have.contains(net) {
                adds.push(Action::AddAddress {
                    link: d.name.clone(),
                    net: *net,
                });
            }
        }
    }
    // IPv6 switches after the stale addresses went (disabling IPv6 flushes them) and
    // before the new ones come (they need IPv6 on), and before the link goes up (which is
    // when the kernel solicits routers, with accept_ra as it is then).
    for d in &desired.links {
        let have = match current(&d.name) {
            Some(l) => observed.ipv6.get(&l.name).copied(),
            None => Some(Ipv6Conf::KERNEL_DEFAULT),
        };
        if let Some(have) = have
            && have != d.ipv6
        {
            actions.push(Action::SetIpv6 {
                link: d.name.clone(),
                value: d.ipv6,
                previous: have,
            });
        }
    }
    actions.extend(adds);

    // 8. Bridged frames must not meet the IP firewall hooks (see BridgeNf).
    let has_bridge = desired
        .links
        .iter()
        .any(|d| matches!(d.role, Role::Virtual(Virtual::Bridge(_))));
    if let Some(nf) = observed.bridge_nf
        && has_bridge
        && nf != BridgeNf::OFF
    {
        actions.push(Action::SetBridgeNf {
            value: BridgeNf::OFF,
            previous: nf,
        });
    }

    if let Some(have) = observed.forwarding {
        let want = Forwarding {
            ipv4: have.ipv4 || desired.forwarding.ipv4,
            ipv6: have.ipv6 || desired.forwarding.ipv6,
        };
        if want != have {
            actions.push(Action::SetForwarding {
                value: want,
                previous: have,
            });
        }
    }

    // 9. Up.
    for d in &desired.links {
        if !up_now.get(&d.name).copied().unwrap_or(false) {
            actions.push(Action::SetUp {
                link: d.name.clone(),
                up: true,
            });
        }
    }

    // 10. Missing routes.
    for want in &desired.routes {
        if !kept_routes.contains(want) {
            actions.push(Action::AddRoute(want.clone()));
        }
    }
    Ok(actions)
}

/// The NICs of the config in the order step 2 renames them: a NIC whose new name another
/// NIC of the config holds goes after that one is renamed away (`lan` becomes `lan0`,
/// then eth2 becomes `lan`). Otherwise the config's order. Two cards swapping names
/// would need a temporary name: refused, left to a human.
fn rename_order<'a>(
    desired: &'a Desired,
    observed: &Observed,
    claimed: &BTreeMap<&str, &str>,
) -> Result<Vec<&'a DesiredLink>, PlanError> {
    // (desired link, kernel name it has now)
    let mut pending: Vec<(&DesiredLink, &str)> = desired
        .links
        .iter()
        .filter(|d| matches!(d.role, Role::Nic(_)))
        .filter_map(|d| {
            observed
                .links
                .iter()
                .find(|l| claimed.get(l.name.as_str()) == Some(&d.name.as_str()))
                .map(|l| (d, l.name.as_str()))
        })
        .collect();
    let mut order = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        // Ready: no other NIC still to rename holds the name this one takes.
        let ready = pending.iter().position(|(d, from)| {
            pending
                .iter()
                .all(|(_, other)| *other == *from || *other != d.name)
        });
        match ready {
            Some(i) => order.push(pending.remove(i).0),
            None => {
                // Every NIC left waits for another: a cycle of renames.
                let Some(&(d, from)) = pending.first() else {
                    break;
                };
                let other = pending
                    .iter()
                    .find(|(_, f)| *f == d.name)
                    .map(|(o, _)| o.name.clone())
                    .unwrap_or_default();
                return Err(PlanError::NamesSwapped {
                    first: d.name.clone(),
                    first_now: from.to_string(),
                    second: other,
                    second_now: d.name.clone(),
                });
            }
        }
    }
    Ok(order)
}
