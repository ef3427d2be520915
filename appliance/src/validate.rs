//! Cross-checks: the rules that span more than one value. Each value on its own has
//! already been checked by its newtype while parsing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use regex::{RegexSet, RegexSetBuilder};

use crate::diag::{ErrorKind, KeyPath};
use crate::model::*;
use crate::types::{
    Cidr, DomainPattern, Host, IfName, Listen, Name, PortRange, Upstream, UpstreamKind,
};

/// A finding of a cross-check, located by key path in the typed model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub kind: ErrorKind,
    pub path: KeyPath,
    pub message: String,
    pub hint: Option<&'static str>,
    /// Other places involved (the other side of an overlap, where a missing name would
    /// be declared), so that a finding caused by an earlier parse error is not reported.
    pub related: Vec<KeyPath>,
}

/// Runs every cross-check and returns what it found, in no particular order.
pub fn check(cfg: &Config) -> Vec<Issue> {
    let mut c = Checker {
        cfg,
        issues: Vec::new(),
    };
    c.links();
    c.subnets();
    c.dhcp();
    c.firewall();
    c.wireguard();
    c.dns();
    c.storage();
    c.services();
    c.issues
}

struct Checker<'a> {
    cfg: &'a Config,
    issues: Vec<Issue>,
}

fn p(keys: &[&str]) -> KeyPath {
    KeyPath::from_keys(keys.iter())
}

/// Whether two of the ranges share a port.
fn any_port_shared(mut ports: Vec<PortRange>) -> bool {
    ports.sort_unstable();
    let mut reach: Option<crate::types::Port> = None;
    for r in ports {
        if reach.is_some_and(|last| r.first <= last) {
            return true;
        }
        reach = Some(reach.map_or(r.last, |last| last.max(r.last)));
    }
    false
}

/// A declared link of any kind, with its key path and addresses.
struct Link<'a> {
    path: KeyPath,
    addresses: &'a [Cidr],
    ipv4: Ipv4Mode,
}

impl<'a> Checker<'a> {
    fn push(&mut self, kind: ErrorKind, path: KeyPath, message: String, hint: &'static str) {
        self.issues.push(Issue {
            kind,
            path,
            message,
            hint: Some(hint),
            related: Vec::new(),
        });
    }

    fn push_related(
        &mut self,
        kind: ErrorKind,
        path: KeyPath,
        message: String,
        hint: &'static str,
        related: Vec<KeyPath>,
    ) {
        self.issues.push(Issue {
            kind,
            path,
            message,
            hint: Some(hint),
            related,
        });
    }

    /// Every link by name: interfaces, VLANs, bridges and WireGuard tunnels.
    fn link(&self, name: &IfName) -> Option<Link<'a>> {
        link_in(self.cfg, name)
    }
}

fn link_in<'a>(cfg: &'a Config, name: &IfName) -> Option<Link<'a>> {
    {
        if let Some(i) = cfg.interfaces.get(name) {
            return Some(Link {
                path: p(&["interfaces", name.as_str()]),
                addresses: &i.addresses,
                ipv4: i.ipv4_mode(),
            });
        }
        if let Some(v) = cfg.vlans.get(name) {
            return Some(Link {
                path: p(&["vlans", name.as_str()]),
                addresses: &v.addresses,
                ipv4: v.ipv4_mode(),
            });
        }
        if let Some(b) = cfg.bridges.get(name) {
            return Some(Link {
                path: p(&["bridges", name.as_str()]),
                addresses: &b.addresses,
                ipv4: b.ipv4_mode(),
            });
        }
        if let Some(w) = cfg.wireguard.get(name) {
            return Some(Link {
                path: p(&["wireguard", name.as_str()]),
                addresses: &w.addresses,
                ipv4: if w.addresses.iter().any(Cidr::is_ipv4) {
                    Ipv4Mode::Static
                } else {
                    Ipv4Mode::None
                },
            });
        }
        None
    }
}

impl<'a> Checker<'a> {
    /// Where a link called `name` could be declared, for suppressing echoes of parse errors.
    fn link_homes(name: &str) -> Vec<KeyPath> {
        ["interfaces", "vlans", "bridges", "wireguard"]
            .iter()
            .map(|s| p(&[s, name]))
            .collect()
    }

    fn require_link(&mut self, name: &IfName, path: KeyPath, what: &str) -> Option<Link<'a>> {
        let l = self.link(name);
        if l.is_none() {
            self.push_related(
                ErrorKind::UnknownReference,
                path,
                format!("{what} {name:?} is not declared"),
                "declare it under [interfaces], [vlans], [bridges] or [wireguard]",
                Self::link_homes(name.as_str()),
            );
        }
        l
    }

    fn require_zone(&mut self, name: &Name, path: KeyPath) {
        if !self.cfg.firewall.zones.contains_key(name) {
            self.push_related(
                ErrorKind::UnknownReference,
                path,
                format!("zone {name:?} is not declared"),
                "declare it as [firewall.zones.<name>]",
                vec![p(&["firewall", "zones", name.as_str()])],
            );
        }
    }

    fn require_pool(&mut self, ds: &crate::types::DatasetName, path: KeyPath) {
        let pool = ds.pool();
        if !self.cfg.storage.pools.keys().any(|k| k.as_str() == pool) {
            self.push_related(
                ErrorKind::UnknownReference,
                path,
                format!(
                    "dataset {:?} is in pool {pool:?}, which is not declared",
                    ds.as_str()
                ),
                "declare the pool as [storage.pools.<name>]",
                vec![p(&["storage", "pools", pool])],
            );
        }
    }

    /// A policy's own snapshots on a dataset that replication receives into make the
    /// target differ from the source after the common snapshot: the next incremental
    /// finds it diverged (zrepl refuses this too). The receive areas on this box are a
    /// local job's `target_dataset` and the listener's `datasets`; the received datasets
    /// lie below them (an area itself only holds them).
    fn policy_over_replicas(
        &mut self,
        path: KeyPath,
        dataset: &crate::types::DatasetName,
        recursive: bool,
    ) {
        let cfg = self.cfg;
        let below = |ds: &str, root: &str| {
            ds.strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('/'))
        };
        let mut areas: Vec<(KeyPath, &str)> = (cfg.replication.iter())
            .filter(|(_, job)| job.transport == Transport::Local)
            .map(|(name, job)| {
                let key = p(&["replication", name.as_str(), "target_dataset"]);
                (key, job.target_dataset.as_str())
            })
            .collect();
        if let Some(listener) = &cfg.storage.replication_listener {
            for (n, d) in listener.datasets.iter().enumerate() {
                let key = p(&["storage", "replication_listener", "datasets"]).index(n);
                areas.push((key, d.as_str()));
            }
        }
        let d = dataset.as_str();
        for (area_key, area) in areas {
            if below(d, area) || (recursive && (d == area || below(area, d))) {
                self.push_related(
                    ErrorKind::Conflict,
                    path.clone(),
                    format!(
                        "this policy snapshots {d}{}, where {area_key} = {area:?} receives \
                         replicas: their next incremental would find snapshots the source \
                         never had and be refused as diverged",
                        if recursive { " and its children" } else { "" },
                    ),
                    "snapshot the source datasets instead (the replica receives their \
                     snapshots), or keep the policy off the received datasets",
                    vec![area_key],
                );
            }
        }
    }

    /// Two policies covering one dataset would each prune the other's snapshots (each
    /// keeps its own counts of the same periods). Reported at the entry of the policy
    /// that comes later by name, as stored's daemon (which refuses such a generation too)
    /// names them; a recursive policy covers every dataset below its own, declared or not.
    fn policies_overlapping(
        &mut self,
        name: &Name,
        index: usize,
        dataset: &crate::types::DatasetName,
        recursive: bool,
    ) {
        let below = |ds: &str, root: &str| {
            ds.strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('/'))
        };
        let d = dataset.as_str();
        let earlier = self.cfg.snapshots.iter().take_while(|(n, _)| *n != name);
        let mut found = Vec::new();
        for (other, op) in earlier {
            for (m, o) in op.datasets.iter().enumerate() {
                let o = o.as_str();
                if d == o || (op.recursive && below(d, o)) || (recursive && below(o, d)) {
                    found.push((p(&["snapshots", other.as_str(), "datasets"]).index(m), o));
                }
            }
        }
        for (other_key, o) in found {
            self.push_related(
                ErrorKind::Overlap,
                p(&["snapshots", name.as_str(), "datasets"]).index(index),
                format!(
                    "this policy covers {d}{}, as {other_key} = {o:?}{} does: each policy \
                     would prune the other's snapshots",
                    if recursive { " and its children" } else { "" },
                    if recursive || d == o {
                        ""
                    } else {
                        " (recursive)"
                    },
                ),
                "give each dataset one policy: merge the counts into one, or take the \
                 dataset out of one policy's datasets (or its recursive = true)",
                vec![other_key],
            );
        }
    }

    /// Where a job sends: `target` for tls and ssh; for a local job, a pool of this box
    /// and never one of its own sources (each run would replicate its replica again).
    fn replication_target(&mut self, path: &KeyPath, job: &crate::model::ReplicationJob) {
        if job.transport != Transport::Local {
            if job.target.is_none() {
                self.push(
                    ErrorKind::MissingKey,
                    path.clone(),
                    "the job has no target".into(),
                    "target = \"backup.example.net:7410\" (the receiving box), or \
                     transport = \"local\" for a pool on this box",
                );
            }
            return;
        }
        let keys = [
            ("target", job.target.is_some()),
            ("target_fingerprint", job.target_fingerprint.is_some()),
            ("identity_file", job.identity_file.is_some()),
        ];
        for (key, set) in keys {
            if set {
                self.push(
                    ErrorKind::Conflict,
                    path.clone().key(key),
                    format!("a local job sends to a pool on this box and takes no {key}"),
                    "remove it, or set transport = \"tls\" or \"ssh\" to send to another box",
                );
            }
        }
        let target_dataset = &job.target_dataset;
        self.require_pool(target_dataset, path.clone().key("target_dataset"));
        let inside = |ds: &str, root: &str| {
            ds == root
                || ds
                    .strip_prefix(root)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        for source in &job.datasets {
            // Where the source lands: target_dataset/<its last component>.
            let last = source
                .as_str()
                .rsplit('/')
                .next()
                .unwrap_or(source.as_str());
            let lands = format!("{}/{last}", target_dataset.as_str());
            // A recursive job would also pick up its replica as a child of the source.
            let clash =
                lands == source.as_str() || (job.recursive && inside(&lands, source.as_str()));
            if clash {
                self.push(
                    ErrorKind::Conflict,
                    path.clone().key("target_dataset"),
                    format!(
                        "{} would be received at {lands}, which is {} itself or below it",
                        source.as_str(),
                        source.as_str()
                    ),
                    "receive into a dataset outside the sources, usually on another pool",
                );
            }
        }
    }

    fn links(&mut self) {
        let cfg = self.cfg;
        // One namespace for all link kinds: they become kernel interfaces of these names.
        let mut seen: BTreeMap<&IfName, KeyPath> = BTreeMap::new();
        let all = cfg
            .interfaces
            .keys()
            .map(|k| (k, "interfaces"))
            .chain(cfg.vlans.keys().map(|k| (k, "vlans")))
            .chain(cfg.bridges.keys().map(|k| (k, "bridges")))
            .chain(cfg.wireguard.keys().map(|k| (k, "wireguard")));
        for (name, section) in all {
            let path = p(&[section, name.as_str()]);
            if let Some(first) = seen.get(name) {
                let first = first.clone();
                self.push_related(
                    ErrorKind::Duplicate,
                    path,
                    format!("link name {name:?} is already used by {first}"),
                    "interfaces, VLANs, bridges and tunnels share one namespace of link names",
                    vec![first],
                );
            } else {
                seen.insert(name, path);
            }
        }

        let mut devices: BTreeMap<String, KeyPath> = BTreeMap::new();
        for (name, i) in &cfg.interfaces {
            let path = p(&["interfaces", name.as_str()]);
            let key = match (&i.device, &i.mac) {
                (Some(_), Some(_)) => {
                    self.push(
                        ErrorKind::Conflict,
                        path.clone().key("mac"),
                        "give either device or mac, not both".into(),
                        "match a NIC by its kernel name or by its MAC address",
                    );
                    None
                }
                (None, None) => {
                    self.push(
                        ErrorKind::MissingKey,
                        path.clone(),
                        format!("interface {name:?} has neither device nor mac"),
                        "add device = \"eth0\" or mac = \"52:54:00:12:34:56\"",
                    );
                    None
                }
                (Some(d), None) => Some((format!("device {d}"), "device")),
                (None, Some(m)) => Some((format!("mac {m}"), "mac")),
            };
            if let Some((k, field)) = key {
                if let Some(first) = devices.get(&k) {
                    let first = first.clone();
                    self.push_related(
                        ErrorKind::Duplicate,
                        path.clone().key(field),
                        format!("{k} is already matched by {first}"),
                        "each NIC can back only one interface",
                        vec![first],
                    );
                } else {
                    devices.insert(k, path.clone());
                }
            }
            self.addressing(&path, i);
        }

        let mut tags: BTreeMap<(&IfName, u16), KeyPath> = BTreeMap::new();
        for (name, v) in &cfg.vlans {
            let path = p(&["vlans", name.as_str()]);
            match (
                cfg.interfaces.contains_key(&v.parent),
                cfg.bridges.contains_key(&v.parent),
            ) {
                (false, false) => {
                    let mut homes = vec![
                        p(&["interfaces", v.parent.as_str()]),
                        p(&["bridges", v.parent.as_str()]),
                    ];
                    homes.extend(Self::link_homes(v.parent.as_str()));
                    self.push_related(
                        ErrorKind::UnknownReference,
                        path.clone().key("parent"),
                        format!(
                            "parent {:?} is not a declared interface or bridge",
                            v.parent.as_str()
                        ),
                        "a VLAN rides on an [interfaces.<name>] or [bridges.<name>]",
                        homes,
                    );
                }
                _ => {
                    // The kernel gives every port of a filtering bridge VLAN 1 as its PVID
                    // (untagged); a sub-interface tagged 1 would fight over that entry and
                    // cut off the bridge's untagged clients.
                    if v.id.get() == 1
                        && cfg.bridges.get(&v.parent).is_some_and(|b| b.vlan_filtering)
                    {
                        self.push(
                            ErrorKind::Conflict,
                            path.clone().key("id"),
                            format!(
                                "VLAN 1 on {} is the bridge's untagged default VLAN while vlan_filtering is on",
                                v.parent
                            ),
                            "give this VLAN another id (2-4094): the untagged clients of the bridge use VLAN 1",
                        );
                    }
                    let parent_mtu = cfg
                        .interfaces
                        .get(&v.parent)
                        .and_then(|i| i.mtu)
                        .or_else(|| cfg.bridges.get(&v.parent).and_then(|b| b.mtu));
                    if let (Some(m), Some(pm)) = (v.mtu, parent_mtu)
                        && m > pm
                    {
                        self.push(
                            ErrorKind::Conflict,
                            path.clone().key("mtu"),
                            format!("MTU {m} exceeds the parent's MTU {pm}"),
                            "a VLAN's MTU can be at most its parent's",
                        );
                    }
                }
            }
            let key = (&v.parent, v.id.get());
            if let Some(first) = tags.get(&key) {
                let first = first.clone();
                self.push_related(
                    ErrorKind::Duplicate,
                    path.clone().key("id"),
                    format!(
                        "VLAN {} on {} is already declared by {first}",
                        v.id, v.parent
                    ),
                    "one VLAN id per parent",
                    vec![first],
                );
            } else {
                tags.insert(key, path.clone());
            }
            self.addressing(&path, v);
        }

        let mut enslaved: BTreeMap<&IfName, KeyPath> = BTreeMap::new();
        for (name, b) in &cfg.bridges {
            let path = p(&["bridges", name.as_str()]);
            for (n, m) in b.members.iter().enumerate() {
                let mpath = path.clone().key("members").index(n);
                let addressed = if let Some(i) = cfg.interfaces.get(m) {
                    !i.addresses.is_empty() || i.ipv4_mode() == Ipv4Mode::Dhcp
                } else if let Some(v) = cfg.vlans.get(m) {
                    !v.addresses.is_empty() || v.ipv4_mode() == Ipv4Mode::Dhcp
                } else {
                    let mut homes = vec![p(&["interfaces", m.as_str()]), p(&["vlans", m.as_str()])];
                    homes.extend(Self::link_homes(m.as_str()));
                    self.push_related(
                        ErrorKind::UnknownReference,
                        mpath,
                        format!(
                            "member {:?} is not a declared interface or VLAN",
                            m.as_str()
                        ),
                        "bridge members are [interfaces.<name>] or [vlans.<name>]",
                        homes,
                    );
                    continue;
                };
                if addressed {
                    self.push(
                        ErrorKind::Conflict,
                        mpath.clone(),
                        format!("member {:?} has its own addresses", m.as_str()),
                        "a bridge port carries no addresses: put them on the bridge",
                    );
                }
                if let Some(first) = enslaved.get(m) {
                    let first = first.clone();
                    self.push_related(
                        ErrorKind::Duplicate,
                        mpath,
                        format!("{:?} is already a member of {first}", m.as_str()),
                        "a link can be in one bridge only",
                        vec![first],
                    );
                } else {
                    enslaved.insert(m, path.clone());
                }
            }
            self.bridge_ports(name, b);
            self.addressing(&path, b);
        }
    }

    /// `[bridges.<b>.ports.<port>]`: a member of the bridge, on a filtering bridge, naming
    /// VLANs of the bridge (ids of `[vlans.*]` on it), each once, untagged or tagged.
    fn bridge_ports(&mut self, name: &IfName, b: &Bridge) {
        let declared: BTreeSet<u16> = self
            .cfg
            .vlans
            .values()
            .filter(|v| v.parent == *name)
            .map(|v| v.id.get())
            .collect();
        for (port, v) in &b.ports {
            let path = p(&["bridges", name.as_str(), "ports", port.as_str()]);
            if !b.members.contains(port) {
                self.push_related(
                    ErrorKind::UnknownReference,
                    path.clone(),
                    format!("{:?} is not a member of bridge {name}", port.as_str()),
                    "list the port in the bridge's members, or remove its entry",
                    vec![p(&["bridges", name.as_str(), "members"])],
                );
            }
            if !b.vlan_filtering {
                self.push(
                    ErrorKind::Conflict,
                    path.clone(),
                    format!("port VLANs on {name}, which does not filter VLANs"),
                    "set vlan_filtering = true on the bridge, or remove the port's entry",
                );
            }
            let mut seen: BTreeSet<u16> = BTreeSet::new();
            let ids = v
                .untagged
                .iter()
                .map(|id| (path.clone().key("untagged"), *id))
                .chain(
                    v.tagged
                        .iter()
                        .flatten()
                        .enumerate()
                        .map(|(i, id)| (path.clone().key("tagged").index(i), *id)),
                );
            for (at, id) in ids {
                let id = id.get();
                if id == 1 {
                    self.push(
                        ErrorKind::Conflict,
                        at,
                        format!("VLAN 1 on port {port} of {name} is the kernel's default VLAN"),
                        "every port without `untagged` keeps VLAN 1 untagged as its PVID; name another VLAN of the bridge (2-4094)",
                    );
                } else if !declared.contains(&id) {
                    self.push(
                        ErrorKind::UnknownReference,
                        at,
                        format!("VLAN {id} is not a VLAN of bridge {name}"),
                        "declare it as a [vlans.<name>] with parent = the bridge and this id",
                    );
                } else if !seen.insert(id) {
                    self.push(
                        ErrorKind::Duplicate,
                        at,
                        format!("VLAN {id} is listed twice for port {port} of {name}"),
                        "a VLAN is on a port once: untagged (its PVID) or tagged",
                    );
                }
            }
        }
    }

    fn addressing(&mut self, path: &KeyPath, l: &dyn Addressed) {
        let v4 = l.addresses().iter().any(Cidr::is_ipv4);
        let v6 = l.addresses().iter().any(|a| !a.is_ipv4());
        match l.ipv4_mode() {
            Ipv4Mode::Static if !v4 => self.push(
                ErrorKind::MissingKey,
                path.clone().key("addresses"),
                "ipv4 = \"static\" needs an IPv4 address".into(),
                "add addresses = [\"192.168.1.1/24\"]",
            ),
            Ipv4Mode::Dhcp | Ipv4Mode::None if v4 => self.push(
                ErrorKind::Conflict,
                path.clone().key("ipv4"),
                format!(
                    "ipv4 = \"{}\" but addresses has an IPv4 address",
                    if l.ipv4_mode() == Ipv4Mode::Dhcp {
                        "dhcp"
                    } else {
                        "none"
                    }
                ),
                "use ipv4 = \"static\", or remove the IPv4 address",
            ),
            _ => {}
        }
        match l.ipv6_mode() {
            Ipv6Mode::Static if !v6 => self.push(
                ErrorKind::MissingKey,
                path.clone().key("addresses"),
                "ipv6 = \"static\" needs an IPv6 address".into(),
                "add addresses = [\"fd00::1/64\"]",
            ),
            Ipv6Mode::None if v6 => self.push(
                ErrorKind::Conflict,
                path.clone().key("ipv6"),
                "ipv6 = \"none\" but addresses has an IPv6 address".into(),
                "use ipv6 = \"static\", or remove the IPv6 address",
            ),
            _ => {}
        }
        for (n, a) in l.addresses().iter().enumerate() {
            if a.is_network_or_broadcast() {
                self.push(
                    ErrorKind::InvalidValue,
                    path.clone().key("addresses").index(n),
                    format!("{a} is the network or broadcast address of its subnet"),
                    "give the link's own address, like 192.168.1.1/24",
                );
            }
        }
        if let Some(m) = l.mtu()
            && v6
            && m.get() < 1280
        {
            self.push(
                ErrorKind::InvalidValue,
                path.clone().key("mtu"),
                format!("MTU {m} is below IPv6's minimum of 1280"),
                "raise the MTU to 1280 or more",
            );
        }
        for (n, r) in l.routes().iter().enumerate() {
            if !l.addresses().iter().any(|a| a.contains(&r.via)) && l.ipv4_mode() != Ipv4Mode::Dhcp
            {
                self.push(
                    ErrorKind::OutsideSubnet,
                    path.clone().key("routes").index(n).key("via"),
                    format!("next hop {} is not in a subnet of this link", r.via),
                    "the next hop must be directly reachable on the link",
                );
            }
        }
    }

    fn subnets(&mut self) {
        let cfg = self.cfg;
        let mut nets: Vec<(KeyPath, Cidr)> = Vec::new();
        let mut add = |section: &str, name: &IfName, addrs: &[Cidr]| {
            for (n, a) in addrs.iter().enumerate() {
                nets.push((p(&[section, name.as_str()]).key("addresses").index(n), *a));
            }
        };
        for (k, i) in &cfg.interfaces {
            add("interfaces", k, &i.addresses);
        }
        for (k, v) in &cfg.vlans {
            add("vlans", k, &v.addresses);
        }
        for (k, b) in &cfg.bridges {
            add("bridges", k, &b.addresses);
        }
        for (k, w) in &cfg.wireguard {
            add("wireguard", k, &w.addresses);
        }
        for (i, (pa, a)) in nets.iter().enumerate() {
            if let Some((pb, b)) = nets.iter().take(i).find(|(_, b)| a.overlaps(b)) {
                self.push_related(
                    ErrorKind::Overlap,
                    pa.clone(),
                    format!("subnet {} overlaps {} at {pb}", a.network(), b.network()),
                    "each link needs a subnet of its own",
                    vec![pb.clone()],
                );
            }
        }
    }

    fn dhcp(&mut self) {
        let cfg = self.cfg;
        for (name, d) in &cfg.dhcp {
            let path = p(&["dhcp", name.as_str()]);
            let Some(link) = self.require_link(name, path.clone(), "link") else {
                continue;
            };
            if cfg.wireguard.contains_key(name) {
                self.push(
                    ErrorKind::Conflict,
                    path,
                    "WireGuard tunnels do not carry DHCP".into(),
                    "serve DHCP on an interface, VLAN or bridge",
                );
                continue;
            }
            if link.ipv4 == Ipv4Mode::Dhcp {
                self.push(
                    ErrorKind::Conflict,
                    path.clone(),
                    format!("{name:?} is a DHCP client; it cannot also serve DHCP"),
                    "serve DHCP on a link with a static IPv4 address",
                );
                continue;
            }
            let in_net = |a: &Ipv4Addr| {
                link.addresses
                    .iter()
                    .find(|c| c.is_ipv4() && c.contains(&IpAddr::V4(*a)))
                    .copied()
            };
            let Some(subnet) = link.addresses.iter().find(|c| c.is_ipv4()).copied() else {
                self.push_related(
                    ErrorKind::Conflict,
                    path.clone(),
                    format!("{name:?} has no IPv4 address to serve DHCP from"),
                    "give the link a static address, like addresses = [\"192.168.1.1/24\"]",
                    vec![link.path.clone()],
                );
                continue;
            };
            let own: Vec<IpAddr> = link.addresses.iter().map(Cidr::addr).collect();
            for (field, a) in [("start", d.start), ("end", d.end)] {
                match in_net(&a) {
                    None => self.push(
                        ErrorKind::OutsideSubnet,
                        path.clone().key(field),
                        format!("{a} is outside {}", subnet.network()),
                        "the pool must lie inside the link's subnet",
                    ),
                    Some(c) if c.is_network_or_broadcast_addr(a) => self.push(
                        ErrorKind::InvalidValue,
                        path.clone().key(field),
                        format!("{a} is the network or broadcast address"),
                        "leave the first and last address of the subnet out of the pool",
                    ),
                    Some(_) => {}
                }
            }
            if d.start > d.end {
                self.push(
                    ErrorKind::InvalidValue,
                    path.clone().key("end"),
                    format!("pool end {} is before its start {}", d.end, d.start),
                    "start is the first address of the pool, end the last",
                );
            } else if let Some(a) = own.iter().find(|a| match a {
                IpAddr::V4(v) => (d.start..=d.end).contains(v),
                IpAddr::V6(_) => false,
            }) {
                self.push(
                    ErrorKind::Conflict,
                    path.clone().key("start"),
                    format!(
                        "the pool {}-{} includes the link's own address {a}",
                        d.start, d.end
                    ),
                    "move the pool so that it excludes the router's address",
                );
            }
            if let Some(r) = d.router
                && in_net(&r).is_none()
            {
                self.push(
                    ErrorKind::OutsideSubnet,
                    path.clone().key("router"),
                    format!("router {r} is outside {}", subnet.network()),
                    "the router option must be reachable on the link",
                );
            }
            let mut macs = BTreeMap::new();
            let mut addrs = BTreeMap::new();
            for (n, l) in d.static_leases.iter().enumerate() {
                let lp = path.clone().key("static_leases").index(n);
                if in_net(&l.address).is_none() {
                    self.push(
                        ErrorKind::OutsideSubnet,
                        lp.clone().key("address"),
                        format!("{} is outside {}", l.address, subnet.network()),
                        "a static lease must lie inside the link's subnet",
                    );
                } else if own.contains(&IpAddr::V4(l.address)) {
                    self.push(
                        ErrorKind::Conflict,
                        lp.clone().key("address"),
                        format!("{} is the link's own address", l.address),
                        "pick another address for the client",
                    );
                }
                if let Some(first) = macs.insert(l.mac, n) {
                    self.push(
                        ErrorKind::Duplicate,
                        lp.clone().key("mac"),
                        format!(
                            "MAC {} already has a lease at static_leases[{first}]",
                            l.mac
                        ),
                        "one static lease per client",
                    );
                }
                if let Some(first) = addrs.insert(l.address, n) {
                    self.push(
                        ErrorKind::Duplicate,
                        lp.key("address"),
                        format!("{} is already leased at static_leases[{first}]", l.address),
                        "an address can be leased to one client only",
                    );
                }
            }
        }
    }

    fn firewall(&mut self) {
        let cfg = self.cfg;
        let fw = &cfg.firewall;
        let mut member: BTreeMap<&IfName, KeyPath> = BTreeMap::new();
        for (zname, z) in &fw.zones {
            for (n, i) in z.interfaces.iter().enumerate() {
                let path = p(&["firewall", "zones", zname.as_str(), "interfaces"]).index(n);
                self.require_link(i, path.clone(), "link");
                if let Some(first) = member.get(i) {
                    let first = first.clone();
                    self.push_related(
                        ErrorKind::Duplicate,
                        path,
                        format!("{:?} is already in zone {first}", i.as_str()),
                        "a link belongs to at most one zone",
                        vec![first],
                    );
                } else {
                    member.insert(i, p(&["firewall", "zones", zname.as_str()]));
                }
            }
        }
        let mut pairs = BTreeSet::new();
        for (n, pol) in fw.policies.iter().enumerate() {
            let path = p(&["firewall", "policies"]).index(n);
            self.require_zone(&pol.from, path.clone().key("from"));
            self.require_zone(&pol.to, path.clone().key("to"));
            if pol.from == pol.to {
                self.push(
                    ErrorKind::Conflict,
                    path.clone().key("to"),
                    "a policy from a zone to itself".into(),
                    "traffic within a zone follows the zone's forward setting",
                );
            }
            if !pairs.insert((&pol.from, &pol.to)) {
                self.push(
                    ErrorKind::Duplicate,
                    path,
                    format!(
                        "a policy from {} to {} is already declared",
                        pol.from, pol.to
                    ),
                    "one policy per pair of zones",
                );
            }
        }
        for (n, r) in fw.rules.iter().enumerate() {
            let path = p(&["firewall", "rules"]).index(n);
            if let Some(z) = &r.from {
                self.require_zone(z, path.clone().key("from"));
            }
            if let Some(z) = &r.to {
                self.require_zone(z, path.clone().key("to"));
            }
            if !r.protocol.has_ports() {
                if !r.ports.is_empty() {
                    self.push(
                        ErrorKind::Conflict,
                        path.clone().key("ports"),
                        "ports need protocol tcp, udp or tcp_udp".into(),
                        "set protocol = \"tcp\" (or udp, tcp_udp)",
                    );
                }
                if !r.source_ports.is_empty() {
                    self.push(
                        ErrorKind::Conflict,
                        path.clone().key("source_ports"),
                        "source_ports need protocol tcp, udp or tcp_udp".into(),
                        "set protocol = \"tcp\" (or udp, tcp_udp)",
                    );
                }
            }
            let fam = |v: &[Cidr]| (v.iter().any(Cidr::is_ipv4), v.iter().any(|c| !c.is_ipv4()));
            let wants_v4 = fam(&r.source).0 || fam(&r.destination).0;
            let wants_v6 = fam(&r.source).1 || fam(&r.destination).1;
            if (r.protocol == Protocol::Icmp && wants_v6 && !wants_v4)
                || (r.protocol == Protocol::Icmpv6 && wants_v4 && !wants_v6)
            {
                self.push(
                    ErrorKind::Conflict,
                    path.clone().key("protocol"),
                    "the protocol's address family does not match the addresses".into(),
                    "icmp goes with IPv4 addresses, icmpv6 with IPv6",
                );
            }
        }
        let zone_of_addr = |a: IpAddr| -> Option<&Name> {
            fw.zones.iter().find_map(|(zn, z)| {
                z.interfaces
                    .iter()
                    .any(|i| {
                        link_in(cfg, i).is_some_and(|l| l.addresses.iter().any(|c| c.contains(&a)))
                    })
                    .then_some(zn)
            })
        };
        let fwds: Vec<_> = fw.forwards.iter().collect();
        // Comparing every pair is quadratic (4M comparisons for 2000 forwards on every
        // load): a sweep over the ports finds the zones where two enabled forwards share
        // a port at all, and only those are searched pair by pair, for the same message.
        let mut by_zone: BTreeMap<&Name, Vec<PortRange>> = BTreeMap::new();
        for (_, f) in fwds.iter().filter(|(_, f)| f.enabled) {
            by_zone.entry(&f.from).or_default().push(f.port);
        }
        let clashing: BTreeSet<&Name> = by_zone
            .into_iter()
            .filter_map(|(zone, ports)| any_port_shared(ports).then_some(zone))
            .collect();
        for (idx, (name, f)) in fwds.iter().enumerate() {
            let path = p(&["firewall", "forwards", name.as_str()]);
            self.require_zone(&f.from, path.clone().key("from"));
            match zone_of_addr(IpAddr::V4(f.to)) {
                None => self.push(
                    ErrorKind::OutsideSubnet,
                    path.clone().key("to"),
                    format!("{} is not in the subnet of any zone's link", f.to),
                    "the target must be a host on one of your internal networks",
                ),
                Some(z) if *z == f.from => self.push(
                    ErrorKind::Conflict,
                    path.clone().key("to"),
                    format!("{} is in zone {z}, the zone the traffic comes from", f.to),
                    "forward to a host in another zone",
                ),
                Some(_) => {}
            }
            if let Some(tp) = f.to_port
                && tp.len() != f.port.len()
            {
                self.push(
                    ErrorKind::Conflict,
                    path.clone().key("to_port"),
                    format!(
                        "to_port {tp} has {} ports but port {} has {}",
                        tp.len(),
                        f.port,
                        f.port.len()
                    ),
                    "the internal range must be as long as the external one",
                );
            }
            if clashing.contains(&f.from)
                && let Some((other, _)) = fwds.iter().take(idx).find(|(_, g)| {
                    g.enabled
                        && f.enabled
                        && g.from == f.from
                        && g.protocol.overlaps(f.protocol)
                        && g.port.overlaps(&f.port)
                })
            {
                self.push_related(
                    ErrorKind::Overlap,
                    path.clone().key("port"),
                    format!("port {} overlaps forward {other:?}", f.port),
                    "each external port can be forwarded once per zone and protocol",
                    vec![p(&["firewall", "forwards", other.as_str()])],
                );
            }
        }
    }

    fn wireguard(&mut self) {
        let cfg = self.cfg;
        let mut ports = BTreeMap::new();
        for (name, w) in &cfg.wireguard {
            let path = p(&["wireguard", name.as_str()]);
            if w.addresses.is_empty() {
                self.push(
                    ErrorKind::MissingKey,
                    path.clone().key("addresses"),
                    "a tunnel needs at least one address".into(),
                    "add addresses = [\"10.8.0.1/24\"]",
                );
            }
            if let Some(port) = w.listen_port
                && let Some(first) = ports.insert(port, name)
            {
                self.push(
                    ErrorKind::Duplicate,
                    path.clone().key("listen_port"),
                    format!("port {port} is already used by wireguard.{first}"),
                    "each tunnel needs its own UDP port",
                );
            }
            let mut keys: BTreeMap<_, &Name> = BTreeMap::new();
            let mut ips: Vec<(KeyPath, &Cidr)> = Vec::new();
            for (pname, peer) in &w.peers {
                let pp = path.clone().key("peers").key(pname);
                if let Some(first) = keys.insert(&peer.public_key, pname) {
                    self.push(
                        ErrorKind::Duplicate,
                        pp.clone().key("public_key"),
                        format!("peer {first:?} has the same public key"),
                        "each peer has its own key pair",
                    );
                }
                if peer.allowed_ips.is_empty() {
                    self.push(
                        ErrorKind::MissingKey,
                        pp.clone().key("allowed_ips"),
                        "a peer needs at least one allowed IP".into(),
                        "add allowed_ips = [\"10.8.0.2/32\"]",
                    );
                }
                if let Some(k) = peer.persistent_keepalive
                    && !(1..=65535).contains(&k.as_secs())
                {
                    self.push(
                        ErrorKind::InvalidValue,
                        pp.clone().key("persistent_keepalive"),
                        format!("keepalive {k} is out of range"),
                        "use 1s..=65535s; 25s suits most NATs",
                    );
                }
                for (n, a) in peer.allowed_ips.iter().enumerate() {
                    let ap = pp.clone().key("allowed_ips").index(n);
                    if let Some((other, b)) = ips.iter().find(|(_, b)| a.overlaps(b)) {
                        self.push_related(ErrorKind::Overlap, ap.clone(), format!("{} overlaps {} at {other}", a.network(), b.network()), "peers of one tunnel must not share allowed IPs: WireGuard routes each address to one peer", vec![other.clone()]);
                    }
                    ips.push((ap, a));
                }
            }
        }
    }

    fn dns(&mut self) {
        let cfg = self.cfg;
        let dns = &cfg.dns;
        for (n, l) in dns.listen.iter().enumerate() {
            if let Listen::Interface(i) = l {
                self.require_link(i, p(&["dns", "listen"]).index(n), "link");
            }
        }
        // dnsd answers a group's custom mode with the global block_addresses (a group has
        // no addresses of its own), so they are needed as soon as anyone uses custom.
        let custom_groups: Vec<&Name> = dns
            .groups
            .iter()
            .filter(|(_, g)| g.block_mode == Some(BlockMode::Custom))
            .map(|(n, _)| n)
            .collect();
        if dns.block_addresses.is_empty() {
            if dns.block_mode == BlockMode::Custom {
                self.push(
                    ErrorKind::MissingKey,
                    p(&["dns", "block_addresses"]),
                    "block_mode = \"custom\" needs block_addresses".into(),
                    "add block_addresses = [\"192.168.1.1\"]",
                );
            }
            for g in custom_groups {
                self.push(
                    ErrorKind::MissingKey,
                    p(&["dns", "groups", g.as_str(), "block_mode"]),
                    format!(
                        "group {g:?} has block_mode = \"custom\" but dns.block_addresses is empty"
                    ),
                    "a group answers with dns.block_addresses: add block_addresses = [\"192.168.1.1\"] under [dns]",
                );
            }
        } else if dns.block_mode != BlockMode::Custom && custom_groups.is_empty() {
            self.push(
                ErrorKind::Conflict,
                p(&["dns", "block_addresses"]),
                "block_addresses are used only with block_mode = \"custom\"".into(),
                "set block_mode = \"custom\" (in [dns] or a group) or remove block_addresses",
            );
        }
        self.dns_regexes(p(&["dns", "allow"]), &dns.allow);
        self.dns_regexes(p(&["dns", "deny"]), &dns.deny);
        for (gname, g) in &dns.groups {
            let path = p(&["dns", "groups", gname.as_str()]);
            self.dns_regexes(path.clone().key("allow"), &g.allow);
            self.dns_regexes(path.key("deny"), &g.deny);
        }
        if let (Some(lo), Some(hi)) = (dns.min_ttl, dns.max_ttl)
            && lo > hi
        {
            self.push(
                ErrorKind::Conflict,
                p(&["dns", "min_ttl"]),
                format!("min_ttl {lo} is above max_ttl {hi}"),
                "min_ttl must not exceed max_ttl",
            );
        }
        for (name, l) in &dns.lists {
            let path = p(&["dns", "lists", name.as_str()]);
            match (&l.url, &l.file) {
                (Some(_), Some(_)) => self.push(
                    ErrorKind::Conflict,
                    path.clone().key("file"),
                    "give either url or file, not both".into(),
                    "a list comes from one place",
                ),
                (None, None) => self.push(
                    ErrorKind::MissingKey,
                    path.clone(),
                    format!("list {name:?} has neither url nor file"),
                    "add url = \"https://...\" or file = \"/data/...\"",
                ),
                _ => {}
            }
            if l.update_interval.as_secs() < 300 {
                self.push(
                    ErrorKind::InvalidValue,
                    path.key("update_interval"),
                    format!("update interval {} is shorter than 5m", l.update_interval),
                    "list maintainers ask for a day or so; the minimum is 5m",
                );
            }
        }
        for (gname, g) in &dns.groups {
            let path = p(&["dns", "groups", gname.as_str()]);
            let has_clients =
                !(g.zones.is_empty() && g.interfaces.is_empty() && g.cidrs.is_empty());
            if gname.as_str() == "default" && has_clients {
                self.push(ErrorKind::Conflict, path.clone(), "the default group takes every client no other group matches; it has no client list".into(), "remove zones, interfaces and cidrs from [dns.groups.default]");
            } else if gname.as_str() != "default" && !has_clients {
                self.push(
                    ErrorKind::MissingKey,
                    path.clone(),
                    format!("group {gname:?} matches no clients"),
                    "add zones, interfaces or cidrs",
                );
            }
            for (n, z) in g.zones.iter().enumerate() {
                self.require_zone(z, path.clone().key("zones").index(n));
            }
            for (n, i) in g.interfaces.iter().enumerate() {
                self.require_link(i, path.clone().key("interfaces").index(n), "link");
            }
            for (n, l) in g.lists.iter().enumerate() {
                if !dns.lists.contains_key(l) {
                    self.push_related(
                        ErrorKind::UnknownReference,
                        path.clone().key("lists").index(n),
                        format!("list {l:?} is not declared"),
                        "declare it as [dns.lists.<name>]",
                        vec![p(&["dns", "lists", l.as_str()])],
                    );
                }
            }
        }
        for (n, r) in dns.records.iter().enumerate() {
            let path = p(&["dns", "records"]).index(n);
            match (r.addresses.is_empty(), &r.cname) {
                (true, None) => self.push(
                    ErrorKind::MissingKey,
                    path,
                    format!("record {} has neither addresses nor cname", r.name),
                    "add addresses = [\"192.168.1.10\"] or cname = \"other.lan\"",
                ),
                (false, Some(_)) => self.push(
                    ErrorKind::Conflict,
                    path.key("cname"),
                    format!("record {} has both addresses and a cname", r.name),
                    "a CNAME cannot coexist with other records",
                ),
                _ => {}
            }
        }
        for (n, f) in dns.forwarding.iter().enumerate() {
            if f.upstreams.is_empty() {
                self.push(
                    ErrorKind::MissingKey,
                    p(&["dns", "forwarding"]).index(n).key("upstreams"),
                    format!("forwarding for {} has no upstreams", f.domain),
                    "add upstreams = [\"10.0.0.53\"]",
                );
            }
        }
        self.dns_bootstrap();
    }

    /// dnsd looks up the address of a DoT or DoH upstream given by name through the plain
    /// upstreams of `dns.upstreams` or the resolvers a WAN DHCP lease names, never through
    /// the system resolver (which may be dnsd itself) nor a forward's own servers. With
    /// neither, such an upstream can never be reached.
    fn dns_bootstrap(&mut self) {
        let (cfg, dns) = (self.cfg, &self.cfg.dns);
        let dhcp = cfg
            .interfaces
            .values()
            .any(|i| i.ipv4_mode() == Ipv4Mode::Dhcp)
            || cfg.vlans.values().any(|v| v.ipv4_mode() == Ipv4Mode::Dhcp)
            || cfg
                .bridges
                .values()
                .any(|b| b.ipv4_mode() == Ipv4Mode::Dhcp);
        if dhcp || dns.upstreams.iter().any(|u| u.kind == UpstreamKind::Plain) {
            return;
        }
        let by_name =
            |u: &Upstream| u.kind != UpstreamKind::Plain && matches!(u.host, Host::Name(_));
        let found: Vec<(KeyPath, String)> = dns
            .upstreams
            .iter()
            .enumerate()
            .map(|(n, u)| (p(&["dns", "upstreams"]).index(n), u))
            .chain(dns.forwarding.iter().enumerate().flat_map(|(n, f)| {
                f.upstreams.iter().enumerate().map(move |(m, u)| {
                    (
                        p(&["dns", "forwarding"]).index(n).key("upstreams").index(m),
                        u,
                    )
                })
            }))
            .filter(|(_, u)| by_name(u))
            .map(|(path, u)| (path, u.to_string()))
            .collect();
        for (path, u) in found {
            self.push(
                ErrorKind::Conflict,
                path,
                format!(
                    "upstream {u} is given by name, and dnsd has nothing to look the name up \
                     with: no plain upstream in dns.upstreams and no link with ipv4 = \"dhcp\""
                ),
                "give its address with the name to verify (tls://9.9.9.9#dns.quad9.net; \
                 https://9.9.9.9/dns-query if the certificate names the address), or add a \
                 plain upstream like \"9.9.9.9\" to dns.upstreams",
            );
        }
    }

    /// Compiles the `/regex/` entries of one allow or deny array as dnsd does (one
    /// `RegexSet` per array, unanchored, the regex crate's default size limits), and
    /// case-insensitively: dnsd matches lowercase names and its lists' regexes are compiled
    /// so; a case-insensitive set is never smaller than the same set case-sensitive, so what
    /// passes here compiles in dnsd either way.
    fn dns_regexes(&mut self, path: KeyPath, patterns: &[DomainPattern]) {
        let regexes: Vec<(usize, &str)> = patterns
            .iter()
            .enumerate()
            .filter_map(|(n, pat)| match pat {
                DomainPattern::Regex(r) => Some((n, r.as_str())),
                _ => None,
            })
            .collect();
        if regexes.is_empty() || dnsd_regex_set(regexes.iter().map(|(_, r)| *r)).is_ok() {
            return;
        }
        let mut found = false;
        for (n, r) in &regexes {
            if let Err(e) = dnsd_regex_set([*r]) {
                found = true;
                self.push(
                    ErrorKind::InvalidValue,
                    path.clone().index(*n),
                    format!("regex /{r}/ does not compile: {}", regex_error(&e)),
                    "fix the regular expression (Rust regex syntax, no look-around or backreferences)",
                );
            }
        }
        if !found {
            // Each compiles alone, the set does not: together they exceed the size limit.
            self.push(
                ErrorKind::InvalidValue,
                path,
                format!(
                    "the {} regexes of this list together exceed dnsd's regex size limit",
                    regexes.len()
                ),
                "use fewer or simpler regexes (a wildcard *.example.com costs nothing)",
            );
        }
    }

    fn storage(&mut self) {
        let cfg = self.cfg;
        const RESERVED: [&str; 6] = ["mirror", "raidz", "spare", "log", "cache", "draid"];
        let mut disks: BTreeMap<&str, KeyPath> = BTreeMap::new();
        for (name, pool) in &cfg.storage.pools {
            let path = p(&["storage", "pools", name.as_str()]);
            if name.as_str().contains('/') {
                self.push(
                    ErrorKind::InvalidValue,
                    path.clone(),
                    format!("pool name {:?} contains '/'", name.as_str()),
                    "a pool name is one component, like tank",
                );
            } else if RESERVED.iter().any(|r| name.as_str().starts_with(r)) {
                self.push(
                    ErrorKind::InvalidValue,
                    path.clone(),
                    format!(
                        "pool name {:?} starts with a name ZFS reserves",
                        name.as_str()
                    ),
                    "mirror, raidz, draid, spare, log and cache are reserved; pick another name",
                );
            }
            if pool.vdevs.is_empty() {
                self.push(
                    ErrorKind::MissingKey,
                    path.clone().key("vdevs"),
                    "a pool needs at least one vdev".into(),
                    "add [[storage.pools.<name>.vdevs]] with layout and disks",
                );
            }
            if !(9..=16).contains(&pool.ashift) {
                self.push(
                    ErrorKind::InvalidValue,
                    path.clone().key("ashift"),
                    format!("ashift {} is out of range", pool.ashift),
                    "ashift is 9..=16; 12 suits 4K-sector disks",
                );
            }
            let mut all = Vec::new();
            for (n, v) in pool.vdevs.iter().enumerate() {
                let vp = path.clone().key("vdevs").index(n);
                let (min, max) = (v.layout.min_disks(), v.layout.max_disks());
                if v.disks.len() < min || v.disks.len() > max {
                    self.push(
                        ErrorKind::InvalidValue,
                        vp.clone().key("disks"),
                        format!(
                            "{:?} needs {} disks, not {}",
                            v.layout,
                            if min == max {
                                min.to_string()
                            } else {
                                format!("at least {min}")
                            },
                            v.disks.len()
                        ),
                        "mirror: 2+, raidz1: 2+, raidz2: 3+, raidz3: 4+, single: exactly 1",
                    );
                }
                for (k, d) in v.disks.iter().enumerate() {
                    all.push((vp.clone().key("disks").index(k), d));
                }
            }
            for (k, d) in pool.spares.iter().enumerate() {
                all.push((path.clone().key("spares").index(k), d));
            }
            for (dp, d) in all {
                if let Some(first) = disks.get(d.as_str()) {
                    let first = first.clone();
                    self.push_related(
                        ErrorKind::Duplicate,
                        dp,
                        format!("disk {d} is already used at {first}"),
                        "a disk can be in one vdev of one pool",
                        vec![first],
                    );
                } else {
                    disks.insert(d.as_str(), dp);
                }
            }
        }
        for (name, d) in &cfg.storage.datasets {
            let path = p(&["storage", "datasets", name.as_str()]);
            self.require_pool(name, path.clone());
            if let Some(rs) = d.recordsize {
                let b = rs.bytes();
                if !b.is_power_of_two() || !(512..=16 << 20).contains(&b) {
                    self.push(
                        ErrorKind::InvalidValue,
                        path.clone().key("recordsize"),
                        format!("recordsize {rs} is not a power of two from 512 to 16M"),
                        "common values: 128K (default), 1M for media, 16K for databases",
                    );
                }
            }
            if let (Some(q), Some(r)) = (d.quota, d.reservation)
                && r > q
            {
                self.push(
                    ErrorKind::Conflict,
                    path.clone().key("reservation"),
                    format!("reservation {r} exceeds quota {q}"),
                    "a dataset cannot reserve more than it may use",
                );
            }
        }
        let mut uids = BTreeMap::new();
        for (name, u) in &cfg.storage.users {
            if let Some(uid) = u.uid {
                let up = p(&["storage", "users", name.as_str(), "uid"]);
                if !(1000..=60000).contains(&uid) {
                    self.push(
                        ErrorKind::InvalidValue,
                        up.clone(),
                        format!("uid {uid} is outside 1000..=60000"),
                        "uids below 1000 belong to the system",
                    );
                }
                if let Some(first) = uids.insert(uid, name) {
                    self.push(
                        ErrorKind::Duplicate,
                        up,
                        format!("uid {uid} is already used by {first:?}"),
                        "each user needs a uid of their own",
                    );
                }
            }
        }
        for (name, s) in &cfg.shares {
            let path = p(&["shares", name.as_str()]);
            self.require_pool(&s.dataset, path.clone().key("dataset"));
            if s.nfs.is_none() && s.smb.is_none() {
                self.push(
                    ErrorKind::MissingKey,
                    path.clone(),
                    format!("share {name:?} has neither nfs nor smb"),
                    "add a [shares.<name>.nfs] or [shares.<name>.smb] table",
                );
            }
            if let Some(nfs) = &s.nfs {
                if nfs.clients.is_empty() {
                    self.push(
                        ErrorKind::MissingKey,
                        path.clone().key("nfs").key("clients"),
                        "an NFS export needs at least one client network".into(),
                        "add clients = [{ network = \"192.168.1.0/24\" }]",
                    );
                }
                for (n, c) in nfs.clients.iter().enumerate() {
                    let has = |o: NfsOption| c.options.contains(&o);
                    let clash = [
                        (NfsOption::Rw, NfsOption::Ro),
                        (NfsOption::Sync, NfsOption::Async),
                        (NfsOption::RootSquash, NfsOption::NoRootSquash),
                        (NfsOption::Secure, NfsOption::Insecure),
                    ]
                    .into_iter()
                    .find(|(a, b)| has(*a) && has(*b));
                    if let Some((a, b)) = clash {
                        self.push(
                            ErrorKind::Conflict,
                            path.clone()
                                .key("nfs")
                                .key("clients")
                                .index(n)
                                .key("options"),
                            format!("options {a:?} and {b:?} contradict each other"),
                            "keep one of the two",
                        );
                    } else if s.read_only && has(NfsOption::Rw) {
                        self.push(
                            ErrorKind::Conflict,
                            path.clone()
                                .key("nfs")
                                .key("clients")
                                .index(n)
                                .key("options"),
                            "option rw on a read_only share".into(),
                            "remove rw or read_only",
                        );
                    }
                }
            }
            if let Some(smb) = &s.smb {
                for (field, list) in [
                    ("users", &smb.users),
                    ("read_only_users", &smb.read_only_users),
                ] {
                    for (n, u) in list.iter().enumerate() {
                        if !cfg.storage.users.contains_key(u) {
                            self.push_related(
                                ErrorKind::UnknownReference,
                                path.clone().key("smb").key(field).index(n),
                                format!("user {u:?} is not declared"),
                                "declare it as [storage.users.<name>]",
                                vec![p(&["storage", "users", u.as_str()])],
                            );
                        }
                    }
                }
                if smb.users.is_empty() && smb.read_only_users.is_empty() && !smb.guest {
                    self.push(
                        ErrorKind::MissingKey,
                        path.clone().key("smb").key("users"),
                        "nobody may use this SMB share".into(),
                        "add users, read_only_users, or guest = true",
                    );
                }
            }
            if let Some(owner) = &s.owner
                && !cfg.storage.users.contains_key(owner)
            {
                self.push_related(
                    ErrorKind::UnknownReference,
                    path.clone().key("owner"),
                    format!("user {owner:?} is not declared"),
                    "declare it as [storage.users.<name>]",
                    vec![p(&["storage", "users", owner.as_str()])],
                );
            }
        }
        for (name, sp) in &cfg.snapshots {
            let path = p(&["snapshots", name.as_str()]);
            if sp.datasets.is_empty() {
                self.push(
                    ErrorKind::MissingKey,
                    path.clone().key("datasets"),
                    "the policy covers no dataset".into(),
                    "add datasets = [\"tank/media\"]",
                );
            }
            for (n, d) in sp.datasets.iter().enumerate() {
                self.require_pool(d, path.clone().key("datasets").index(n));
                self.policy_over_replicas(path.clone().key("datasets").index(n), d, sp.recursive);
                self.policies_overlapping(name, n, d, sp.recursive);
            }
            if [
                sp.frequently,
                sp.hourly,
                sp.daily,
                sp.weekly,
                sp.monthly,
                sp.yearly,
            ]
            .iter()
            .all(|c| *c == 0)
            {
                self.push(
                    ErrorKind::MissingKey,
                    path.clone(),
                    format!("policy {name:?} keeps no snapshots"),
                    "set a count for at least one period, like daily = 30",
                );
            }
            let fi = sp.frequent_interval.as_secs();
            if fi < 60 || 3600 % fi != 0 {
                self.push(
                    ErrorKind::InvalidValue,
                    path.key("frequent_interval"),
                    format!(
                        "frequent_interval {} does not divide an hour into whole minutes",
                        sp.frequent_interval
                    ),
                    "use 1m, 5m, 10m, 15m, 20m or 30m",
                );
            }
        }
        // Where each source lands, by receiving box: target_dataset/<its last component>.
        let mut lands_at: BTreeMap<(Option<String>, String), KeyPath> = BTreeMap::new();
        for (name, job) in &cfg.replication {
            let path = p(&["replication", name.as_str()]);
            let to = job.target.as_ref().map(ToString::to_string);
            for (i, source) in job.datasets.iter().enumerate() {
                let last = source
                    .as_str()
                    .rsplit('/')
                    .next()
                    .unwrap_or(source.as_str());
                let lands = format!("{}/{last}", job.target_dataset.as_str());
                let key = path.clone().key("datasets").index(i);
                if let Some(first) = lands_at.get(&(to.clone(), lands.clone())) {
                    let first = first.clone();
                    self.push_related(
                        ErrorKind::Conflict,
                        key,
                        format!(
                            "{source} would be received at {lands}, as {first} is: each run would \
                             overwrite the other's replica"
                        ),
                        "give one of the jobs another target_dataset, or rename one source",
                        vec![first],
                    );
                } else {
                    lands_at.insert((to.clone(), lands), key);
                }
            }
        }
        for (name, job) in &cfg.replication {
            let path = p(&["replication", name.as_str()]);
            if job.datasets.is_empty() {
                self.push(
                    ErrorKind::MissingKey,
                    path.clone().key("datasets"),
                    "the job replicates no dataset".into(),
                    "add datasets = [\"tank/media\"]",
                );
            }
            for (n, d) in job.datasets.iter().enumerate() {
                self.require_pool(d, path.clone().key("datasets").index(n));
            }
            if job.interval.as_secs() < 60 {
                self.push(
                    ErrorKind::InvalidValue,
                    path.clone().key("interval"),
                    format!("interval {} is shorter than 1m", job.interval),
                    "replicate at most once a minute",
                );
            }
            if job.transport == Transport::Ssh {
                if job.identity_file.is_none() {
                    self.push(
                        ErrorKind::MissingKey,
                        path.clone().key("identity_file"),
                        "an ssh job needs the private key it logs in with".into(),
                        "identity_file = \"/data/secrets/repl_ed25519\" (ssh-keygen -t ed25519); \
                         its .pub goes in the target's authorized_keys",
                    );
                }
                if job.target_fingerprint.is_none() {
                    self.push(
                        ErrorKind::MissingKey,
                        path.clone().key("target_fingerprint"),
                        "an ssh job needs the target's host key fingerprint, so that no \
                         other host is trusted"
                            .into(),
                        "on the target, `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` \
                         prints it (SHA256:...)",
                    );
                }
            }
            if job.transport != Transport::Ssh && job.ssh_user.is_some() {
                self.push(
                    ErrorKind::Conflict,
                    path.clone().key("ssh_user"),
                    "ssh_user applies to ssh jobs only".into(),
                    "remove it, or set transport = \"ssh\"",
                );
            }
            self.replication_target(&path, job);
            if job.bandwidth_limit.is_some_and(|b| b.bytes() < 1024) {
                self.push(
                    ErrorKind::InvalidValue,
                    path.key("bandwidth_limit"),
                    "a bandwidth limit below 1K/s would never finish".into(),
                    "give bytes per second, like 10M",
                );
            }
        }
    }

    fn services(&mut self) {
        let cfg = self.cfg;
        if cfg.update.auto_install && cfg.update.channel.is_none() {
            self.push(
                ErrorKind::MissingKey,
                p(&["update", "channel"]),
                "auto_install needs a channel to install from".into(),
                "set channel = \"https://...\" or turn auto_install off",
            );
        }
        if cfg.update.check_interval.as_secs() < 300 {
            self.push(
                ErrorKind::InvalidValue,
                p(&["update", "check_interval"]),
                format!(
                    "check_interval {} is shorter than 5m",
                    cfg.update.check_interval
                ),
                "check a few times a day at most",
            );
        }
        for (n, l) in cfg.api.listen.iter().enumerate() {
            if let Listen::Interface(i) = l {
                self.require_link(i, p(&["api", "listen"]).index(n), "link");
            }
        }
        if cfg.api.session_timeout.as_secs() < 60 {
            self.push(
                ErrorKind::InvalidValue,
                p(&["api", "session_timeout"]),
                "a session timeout under 1m".into(),
                "use minutes to hours, like 12h",
            );
        }
    }
}

trait NetOrBcast {
    fn is_network_or_broadcast_addr(&self, a: Ipv4Addr) -> bool;
}
impl NetOrBcast for Cidr {
    fn is_network_or_broadcast_addr(&self, a: Ipv4Addr) -> bool {
        match self.network() {
            ipnet::IpNet::V4(n) if n.prefix_len() < 31 => a == n.network() || a == n.broadcast(),
            _ => false,
        }
    }
}

/// A set of regexes compiled as dnsd compiles its own (see `dns_regexes`).
pub(crate) fn dnsd_regex_set<'r>(
    regexes: impl IntoIterator<Item = &'r str>,
) -> Result<RegexSet, regex::Error> {
    RegexSetBuilder::new(regexes).case_insensitive(true).build()
}

/// The regex crate's message on one line: its syntax errors draw a caret under the
/// pattern over several lines, which a one-line diagnostic cannot show.
fn regex_error(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(s) => s.lines().rfind(|l| l.starts_with("error:")).map_or_else(
            || s.replace('\n', " "),
            |l| l.trim_start_matches("error:").trim().to_owned(),
        ),
        regex::Error::CompiledTooBig(limit) => {
            format!("it compiles to more than the {limit}-byte size limit")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    /// (key path, message) of what loading `src` reports; loading runs these checks.
    fn issues(src: &str) -> Vec<(String, String)> {
        match crate::load::load_str(src) {
            Ok(_) => Vec::new(),
            Err(d) => d
                .iter()
                .map(|d| (d.path.to_string(), d.message.clone()))
                .collect(),
        }
    }

    #[test]
    fn forwards_sharing_a_port_are_found_past_the_ones_between() {
        use super::any_port_shared;
        let r = |a: &str| crate::types::PortRange::parse(a).unwrap();
        assert!(!any_port_shared(vec![
            r("22"),
            r("80-90"),
            r("91"),
            r("8000")
        ]));
        // 8000-8500 reaches past 8100 and 8200 to 8400
        assert!(any_port_shared(vec![
            r("8200"),
            r("8400"),
            r("8000-8500"),
            r("8100")
        ]));
        assert!(any_port_shared(vec![r("443"), r("443")]));

        let head = "version = 1\n[interfaces.wan]\ndevice = \"eth0\"\nipv4 = \"dhcp\"\n\
             [interfaces.lan]\ndevice = \"eth1\"\naddresses = [\"192.168.1.1/24\"]\n\
             [interfaces.dmz]\ndevice = \"eth2\"\naddresses = [\"192.168.2.1/24\"]\n\
             [firewall.zones.wan]\ninterfaces = [\"wan\"]\n\
             [firewall.zones.lan]\ninterfaces = [\"lan\"]\n\
             [firewall.zones.dmz]\ninterfaces = [\"dmz\"]\n";
        let fwd = |name: &str, from: &str, proto: &str, port: &str, to: &str| {
            format!(
                "[firewall.forwards.{name}]\nfrom = \"{from}\"\nprotocol = \"{proto}\"\n\
                 port = \"{port}\"\nto = \"{to}\"\n"
            )
        };
        // The same port from two zones, and over tcp and udp from one zone: no overlap.
        let fine = [
            fwd("a", "wan", "tcp", "8000-8500", "192.168.1.20"),
            fwd("b", "wan", "udp", "8400", "192.168.1.21"),
            fwd("c", "dmz", "tcp", "8400", "192.168.1.22"),
        ]
        .concat();
        assert_eq!(issues(&format!("{head}{fine}")), Vec::new());
        // A forward inside an earlier one's range, with others between them by name
        // and by port, is reported against the earlier one.
        let clash = [
            fwd("a", "wan", "tcp", "8000-8500", "192.168.1.20"),
            fwd("b", "wan", "tcp", "8100", "192.168.2.21"),
            fwd("c", "wan", "tcp", "9000", "192.168.1.22"),
            fwd("d", "wan", "tcp_udp", "8400", "192.168.1.23"),
        ]
        .concat();
        let found = issues(&format!("{head}{clash}"));
        assert_eq!(
            found,
            vec![
                (
                    "firewall.forwards.b.port".to_owned(),
                    "port 8100 overlaps forward \"a\"".to_owned()
                ),
                (
                    "firewall.forwards.d.port".to_owned(),
                    "port 8400 overlaps forward \"a\"".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn a_group_in_custom_mode_may_use_the_global_addresses() {
        let found = issues(
            "version = 1\n[dns]\nblock_mode = \"null\"\nblock_addresses = [\"192.168.1.1\"]\n\
             [dns.groups.kids]\ncidrs = [\"192.168.1.64/26\"]\nblock_mode = \"custom\"\n",
        );
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_regex_too_big_for_dnsd_is_refused_at_its_index() {
        let found =
            issues("version = 1\n[dns]\ndeny = [\"ads.example.com\", \"/[a-z]{1000}{1000}/\"]\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "dns.deny[1]");
        assert!(found[0].1.contains("size limit"), "{}", found[0].1);
    }

    #[test]
    fn regexes_that_fit_alone_but_not_together_are_refused_on_the_array() {
        // Each is under the regex crate's default size limit; dnsd compiles them as one set.
        let big = "/[a-z]{300}{100}/";
        assert!(super::dnsd_regex_set(["[a-z]{300}{100}"]).is_ok());
        let deny: Vec<String> = (0..8).map(|_| format!("\"{big}\"")).collect();
        let found = issues(&format!(
            "version = 1\n[dns]\ndeny = [{}]\n",
            deny.join(", ")
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "dns.deny");
        assert!(
            super::dnsd_regex_set((0..8).map(|_| "[a-z]{300}{100}")).is_err(),
            "the set must really be too big for this test to mean anything"
        );
    }
}
