//! An in-memory kernel for unit tests: it keeps an [`Observed`] and refuses what the
//! kernel refuses (renaming a link that is up, an address or route twice, a gateway off
//! every subnet of its link, a VLAN MTU above its parent's, ...), with the same errnos.

use super::action::Action;
use super::adapter::{Netlink, NetlinkError};
use super::state::{
    Address, BridgeNf, BridgeVlan, Forwarding, Ipv6Conf, Link, Mac, OWNER_ALIAS, Observed, Virtual,
};

const EIO: i32 = 5;
const EACCES: i32 = 13;
const EBUSY: i32 = 16;
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EINVAL: i32 = 22;
const ERANGE: i32 = 34;
const EOPNOTSUPP: i32 = 95;
const EADDRNOTAVAIL: i32 = 99;
const ENETUNREACH: i32 = 101;
const ESRCH: i32 = 3;
const ENOENT: i32 = 2;

/// What the kernel gives a new bridge and every new port: VLAN 1, PVID, untagged.
const DEFAULT_PVID: BridgeVlan = BridgeVlan::KERNEL_DEFAULT;

/// The fake kernel.
#[derive(Debug, Clone)]
pub struct FakeNetlink {
    pub state: Observed,
    /// Every step run, failed ones included.
    pub log: Vec<Action>,
    /// The step (0-based, counted over the fake's life) that fails with EIO.
    pub fail_at: Option<usize>,
    /// Whether VLANs can be created (the host kernel of the CI has no 8021q).
    pub vlans: bool,
    next_index: u32,
}

impl FakeNetlink {
    /// A kernel with `lo` and the given NICs (name, MAC), all down, br_netfilter loaded
    /// with its defaults (all on).
    pub fn with_nics(nics: &[(&str, [u8; 6])]) -> Self {
        let mut f = Self {
            state: Observed {
                bridge_nf: Some(BridgeNf {
                    iptables: true,
                    ip6tables: true,
                    arptables: true,
                }),
                forwarding: Some(Forwarding::default()),
                ..Observed::default()
            },
            log: Vec::new(),
            fail_at: None,
            vlans: true,
            next_index: 1,
        };
        let mut lo = f.blank("lo");
        lo.loopback = true;
        lo.up = true;
        lo.mtu = 65536;
        f.state.links.push(lo);
        for (name, mac) in nics {
            let mut l = f.blank(name);
            l.mac = Some(Mac(*mac));
            l.perm_mac = Some(Mac(*mac));
            f.state
                .ipv6
                .insert(name.to_string(), Ipv6Conf::KERNEL_DEFAULT);
            f.state.links.push(l);
        }
        f
    }

    fn blank(&mut self, name: &str) -> Link {
        let index = self.next_index;
        self.next_index += 1;
        Link {
            index,
            name: name.to_string(),
            kind: None,
            mac: None,
            perm_mac: None,
            mtu: 1500,
            up: false,
            loopback: false,
            master: None,
            alias: None,
            vlan: None,
            bridge: None,
        }
    }

    /// Kernel changes made by someone else than netd.
    pub fn link_mut(&mut self, name: &str) -> Option<&mut Link> {
        self.state.links.iter_mut().find(|l| l.name == name)
    }

    /// Steps run so far, failed ones included.
    pub fn writes(&self) -> usize {
        self.log.len()
    }
}

fn find(s: &Observed, name: &str, op: &str) -> Result<usize, NetlinkError> {
    s.links
        .iter()
        .position(|l| l.name == name)
        .ok_or_else(|| NetlinkError::errno(op, ENODEV))
}

impl FakeNetlink {
    fn apply(&mut self, action: &Action) -> Result<(), NetlinkError> {
        let op = action.to_string();
        let err = |e| NetlinkError::errno(op.clone(), e);
        let s = &mut self.state;
        match action {
            Action::Create { name, kind, mtu } => {
                if s.link(name).is_some() {
                    return Err(err(EEXIST));
                }
                let mut l = Link {
                    index: self.next_index,
                    name: name.clone(),
                    kind: None,
                    mac: Some(Mac([2, 0, 0, 0, 0, self.next_index as u8])),
                    perm_mac: None,
                    mtu: mtu.unwrap_or(1500),
                    up: false,
                    loopback: false,
                    master: None,
                    alias: Some(OWNER_ALIAS.into()),
                    vlan: None,
                    bridge: None,
                };
                match kind {
                    Virtual::Bridge(o) => {
                        l.kind = Some("bridge".into());
                        l.bridge = Some(*o);
                        s.bridge_vlans.insert(name.clone(), vec![DEFAULT_PVID]);
                    }
                    Virtual::Vlan { parent, id } => {
                        if !self.vlans {
                            return Err(err(EOPNOTSUPP));
                        }
                        let p = s.link(parent).ok_or_else(|| err(ENODEV))?;
                        if mtu.is_some_and(|m| m > p.mtu) {
                            return Err(err(ERANGE));
                        }
                        l.mac = p.mac;
                        l.mtu = mtu.unwrap_or(p.mtu);
                        l.kind = Some("vlan".into());
                        l.vlan = Some((*id, parent.clone()));
                    }
                }
                self.next_index += 1;
                self.state
                    .ipv6
                    .insert(name.clone(), Ipv6Conf::KERNEL_DEFAULT);
                self.state.links.push(l);
            }
            Action::Delete { name, .. } => {
                let i = find(s, name, &op)?;
                s.links.remove(i);
                s.ipv6.remove(name);
                s.addresses.retain(|a| a.link != *name);
                s.routes.retain(|r| r.dev.as_deref() != Some(name));
                s.bridge_vlans.remove(name);
                for l in &mut s.links {
                    if l.master.as_deref() == Some(name) {
                        l.master = None;
                        // A port leaving its bridge loses its VLAN table.
                        s.bridge_vlans.remove(&l.name);
                    }
                }
            }
            Action::Rename { from, to } => {
                let i = find(s, from, &op)?;
                if s.link(to).is_some() {
                    return Err(err(EEXIST));
                }
                let l = s.links.get_mut(i).ok_or_else(|| err(ENODEV))?;
                if l.up {
                    return Err(err(EBUSY));
                }
                l.name = to.clone();
                if let Some(c) = s.ipv6.remove(from) {
                    s.ipv6.insert(to.clone(), c);
                }
                if let Some(v) = s.bridge_vlans.remove(from) {
                    s.bridge_vlans.insert(to.clone(), v);
                }
                for a in &mut s.addresses {
                    if a.link == *from {
                        a.link = to.clone();
                    }
                }
                for r in &mut s.routes {
                    if r.dev.as_deref() == Some(from) {
                        r.dev = Some(to.clone());
                    }
                }
                for l in &mut s.links {
                    if l.master.as_deref() == Some(from) {
                        l.master = Some(to.clone());
                    }
                    if let Some((_, p)) = &mut l.vlan
                        && p == from
                    {
                        *p = to.clone();
                    }
                }
            }
            Action::SetAlias { link, alias, .. } => {
                let i = find(s, link, &op)?;
                if let Some(l) = s.links.get_mut(i) {
                    l.alias = alias.clone();
                }
            }
            Action::SetUp { link, up } => {
                let i = find(s, link, &op)?;
                if let Some(l) = s.links.get_mut(i) {
                    l.up = *up;
                }
                if !up {
                    // As the kernel: routes through a link that goes down are flushed, and
                    // so are its IPv6 addresses (keep_addr_on_down is off by default).
                    s.routes.retain(|r| r.dev.as_deref() != Some(link));
                    s.addresses
                        .retain(|a| !(a.link == *link && a.net.addr().is_ipv6()));
                }
            }
            Action::SetMtu { link, mtu, .. } => {
                let i = find(s, link, &op)?;
                let parent_mtu = s
                    .links
                    .get(i)
                    .and_then(|l| l.vlan.as_ref())
                    .and_then(|(_, p)| s.link(p))
                    .map(|p| p.mtu);
                if parent_mtu.is_some_and(|p| *mtu > p) {
                    return Err(err(ERANGE));
                }
                if let Some(l) = s.links.get_mut(i) {
                    l.mtu = *mtu;
                }
            }
            Action::SetMaster { link, master, .. } => {
                let i = find(s, link, &op)?;
                if let Some(m) = master {
                    let b = s.link(m).ok_or_else(|| err(ENODEV))?;
                    if b.bridge.is_none() {
                        return Err(err(EINVAL));
                    }
                }
                if let Some(l) = s.links.get_mut(i)
                    && l.master != *master
                {
                    l.master = master.clone();
                    // As the kernel: a port leaves with its VLAN table and joins with
                    // the bridge's default PVID.
                    match master {
                        Some(_) => s.bridge_vlans.insert(link.clone(), vec![DEFAULT_PVID]),
                        None => s.bridge_vlans.remove(link),
                    };
                }
            }
            Action::SetBridge { link, opts, .. } => {
                let i = find(s, link, &op)?;
                match s.links.get_mut(i) {
                    Some(l) if l.bridge.is_some() => l.bridge = Some(*opts),
                    _ => return Err(err(EINVAL)),
                }
            }
            Action::AddAddress { link, net } => {
                find(s, link, &op)?;
                if s.addresses.iter().any(|a| a.link == *link && a.net == *net) {
                    return Err(err(EEXIST));
                }
                if matches!(net, ipnet::IpNet::V6(_))
                    && s.ipv6.get(link).is_some_and(|c| c.disable_ipv6)
                {
                    return Err(err(EACCES));
                }
                s.addresses.push(Address {
                    link: link.clone(),
                    net: *net,
                });
            }
            Action::RemoveAddress { link, net } => {
                let before = s.addresses.len();
                s.addresses.retain(|a| !(a.link == *link && a.net == *net));
                if s.addresses.len() == before {
                    return Err(err(EADDRNOTAVAIL));
                }
            }
            Action::AddRoute(r) => {
                if s.routes
                    .iter()
                    .any(|o| o.dst == r.dst && o.metric == r.metric)
                {
                    return Err(err(EEXIST));
                }
                let dev = r.dev.as_deref().ok_or_else(|| err(EINVAL))?;
                let up = s.link(dev).ok_or_else(|| err(ENODEV))?.up;
                let reachable = r.gateway.is_none_or(|g| {
                    s.addresses
                        .iter()
                        .any(|a| a.link == dev && a.net.trunc().contains(&g))
                });
                if !up || !reachable {
                    return Err(err(ENETUNREACH));
                }
                s.routes.push(r.clone());
            }
            Action::RemoveRoute(r) => {
                let before = s.routes.len();
                s.routes.retain(|o| o != r);
                if s.routes.len() == before {
                    return Err(err(ESRCH));
                }
            }
            Action::AddBridgeVlan {
                link,
                vlan,
                on_self,
            } => {
                let l = s.link(link).ok_or_else(|| err(ENODEV))?;
                // `self` needs a bridge; a port's request goes to its bridge.
                let ok = if *on_self {
                    l.bridge.is_some()
                } else {
                    l.master.is_some()
                };
                if !ok {
                    return Err(err(EOPNOTSUPP));
                }
                let table = s.bridge_vlans.entry(link.clone()).or_default();
                // Adding a VLAN the link has changes its flags, as the kernel does; a
                // link has one PVID, so a new one takes the flag from the old.
                table.retain(|v| v.vid != vlan.vid);
                if vlan.pvid {
                    for v in table.iter_mut() {
                        v.pvid = false;
                    }
                }
                table.push(*vlan);
                table.sort();
            }
            Action::RemoveBridgeVlan { link, vlan, .. } => {
                let table = s.bridge_vlans.get_mut(link).ok_or_else(|| err(ENOENT))?;
                let before = table.len();
                table.retain(|v| v.vid != vlan.vid);
                if table.len() == before {
                    return Err(err(ENOENT));
                }
                if table.is_empty() {
                    s.bridge_vlans.remove(link);
                }
            }
            Action::SetBridgeNf { value, .. } => match &mut s.bridge_nf {
                Some(nf) => *nf = *value,
                None => return Err(err(ENOENT)),
            },
            Action::SetIpv6 { link, value, .. } => {
                let c = s.ipv6.get_mut(link).ok_or_else(|| err(ENOENT))?;
                *c = *value;
                if value.disable_ipv6 {
                    // The kernel flushes every IPv6 address of the link.
                    s.addresses
                        .retain(|a| a.link != *link || matches!(a.net, ipnet::IpNet::V4(_)));
                }
            }
            Action::SetForwarding { value, .. } => match &mut s.forwarding {
                Some(f) => *f = *value,
                None => return Err(err(ENOENT)),
            },
        }
        Ok(())
    }
}

impl Netlink for FakeNetlink {
    fn observe(&mut self) -> Result<Observed, NetlinkError> {
        Ok(self.state.clone())
    }

    fn execute(&mut self, action: &Action) -> Result<(), NetlinkError> {
        let k = self.log.len();
        self.log.push(action.clone());
        if self.fail_at == Some(k) {
            return Err(NetlinkError::errno(action.to_string(), EIO));
        }
        self.apply(action)
    }
}

impl FakeNetlink {
    /// Changes the kernel behind netd's back (another tool, the DHCP client, a test).
    pub fn apply_foreign(&mut self, f: impl FnOnce(&mut Observed)) {
        f(&mut self.state)
    }
}
