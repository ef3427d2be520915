//! Config → [`Ruleset`]: a pure function, so every behaviour here is unit-tested without a
//! kernel. The layout of the table:
//!
//! ```text
//! set <zone>_addr4                  the zone's own IPv4 addresses (DNAT matches these)
//! chain input / forward / output    base chains: fast path, invalid, then dispatch by link
//! chain input_<zone> ...            per-zone chains: rules, policies, the zone default
//! chain prerouting / postrouting    port forwards (DNAT), hairpin and masquerade
//! ```

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use appliance::Config;
use appliance::model::{
    Addressed, ForwardProtocol, Ipv4Mode, PortForward, Protocol, Rule as CfgRule, Verdict, Zone,
};
use appliance::types::{Cidr, IfName, Name};
use nftables::expr::{Expression, Map, MetaKey, NamedExpression, SetItem};
use nftables::schema::{
    Chain, Map as MapDecl, NfListObject, Rule, Set, SetFlag, SetType, SetTypeValue,
};
use nftables::stmt::{Limit, NAT, NATFamily, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::TABLE;
use super::expr::{
    Expr, Stmt, accept, counter, ct, drop_, has_flags, jump, jump_map, log, matches, meta, names,
    networks, payload, port, ports, reject_icmpx, s, tcp_reset, verdict,
};
use super::ruleset::{Networks, Ruleset, VERDICT_PLACEHOLDER, zone_set, zone_set_name};
use ipnet::IpNet;

/// Address lists longer than this become a named set of their own, so that a changed list
/// is element updates in the kernel instead of its rule (and chain) written again.
pub const NAMED_SET_THRESHOLD: usize = 64;

/// nft's default burst; written out so that the rule says what it does.
const DEFAULT_BURST: u32 = 5;

/// ICMPv6 types IPv6 cannot work without: neighbour discovery and router discovery.
const ICMPV6_ND: [&str; 4] = [
    "nd-router-solicit",
    "nd-router-advert",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
];

/// Renders the firewall section (with the links it names) into the table's content.
/// The config is assumed validated: references resolve, ports and ranges agree.
pub fn render(cfg: &Config) -> Ruleset {
    let ctx = Ctx { cfg };
    let mut out = Out::default();
    zone_sets(&ctx, &mut out);
    base_chains(&mut out);
    zone_chains(&ctx, &mut out);
    input_base(&ctx, &mut out);
    forward_base(&ctx, &mut out);
    output_base(&ctx, &mut out);
    for (zname, zone) in &cfg.firewall.zones {
        input_zone(&ctx, zname, zone, &mut out);
        forward_zone(&ctx, zname, zone, &mut out);
        output_zone(zname, zone, &mut out);
    }
    prerouting(&ctx, &mut out);
    postrouting(&ctx, &mut out);
    out.finish()
}

struct Ctx<'a> {
    cfg: &'a Config,
}

impl Ctx<'_> {
    fn zones(&self) -> impl Iterator<Item = (&Name, &Zone)> {
        self.cfg.firewall.zones.iter()
    }

    fn links(&self, zone: &Name) -> Vec<&str> {
        self.cfg
            .firewall
            .zones
            .get(zone)
            .map(|z| z.interfaces.iter().map(IfName::as_str).collect())
            .unwrap_or_default()
    }

    fn link_addresses(&self, link: &IfName) -> &[Cidr] {
        let c = self.cfg;
        if let Some(i) = c.interfaces.get(link) {
            i.addresses()
        } else if let Some(v) = c.vlans.get(link) {
            v.addresses()
        } else if let Some(b) = c.bridges.get(link) {
            b.addresses()
        } else if let Some(w) = c.wireguard.get(link) {
            &w.addresses
        } else {
            &[]
        }
    }

    fn link_ipv4_mode(&self, link: &IfName) -> Option<Ipv4Mode> {
        let c = self.cfg;
        c.interfaces
            .get(link)
            .map(Addressed::ipv4_mode)
            .or_else(|| c.vlans.get(link).map(Addressed::ipv4_mode))
            .or_else(|| c.bridges.get(link).map(Addressed::ipv4_mode))
    }

    /// Every link named in some zone, in zone order, with its zone.
    fn zoned_links(&self) -> impl Iterator<Item = (&Name, &IfName)> {
        self.zones()
            .flat_map(|(zn, z)| z.interfaces.iter().map(move |l| (zn, l)))
    }
}

#[derive(Default)]
struct Out {
    declarations: Vec<NfListObject<'static>>,
    rules: Vec<NfListObject<'static>>,
    /// Named address sets already declared: a rule without a zone renders into every
    /// zone's chain, and all of them share the one set.
    address_sets: BTreeSet<String>,
    /// Their declarations and elements, declared first: the rules name them.
    compact: Vec<(Set<'static>, Networks)>,
}

impl Out {
    fn declare(&mut self, obj: NfListObject<'static>) {
        self.declarations.push(obj);
    }

    fn rule(&mut self, chain: &str, expr: Vec<Stmt>, comment: Option<String>) {
        self.rules.push(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: TABLE.into(),
            chain: chain.to_owned().into(),
            expr: expr.into(),
            handle: None,
            index: None,
            comment: comment.map(Into::into),
        }));
    }

    fn finish(self) -> Ruleset {
        let mut rs = Ruleset::default();
        for (set, nets) in self.compact {
            rs.push_address_set(set, nets);
        }
        for o in self.declarations.into_iter().chain(self.rules) {
            rs.push(o);
        }
        rs
    }
}

fn chain(name: &str) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.to_owned().into(),
        ..Chain::default()
    }
}

fn base_chain(
    name: &str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
    policy: NfChainPolicy,
) -> Chain<'static> {
    Chain {
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(policy),
        ..chain(name)
    }
}

fn zone_sets(ctx: &Ctx<'_>, out: &mut Out) {
    for (zname, zone) in ctx.zones() {
        let addrs: Vec<_> = zone
            .interfaces
            .iter()
            .flat_map(|l| ctx.link_addresses(l))
            .filter_map(|c| match c.addr() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect();
        out.declare(NfListObject::Set(Box::new(zone_set(
            zname.as_str(),
            &addrs,
        ))));
    }
}

fn base_chains(out: &mut Out) {
    use NfChainPolicy::{Accept, Drop};
    use NfChainType::{Filter, NAT as Nat};
    for (name, kind, hook, prio, policy) in [
        ("input", Filter, NfHook::Input, 0, Drop),
        ("forward", Filter, NfHook::Forward, 0, Drop),
        ("output", Filter, NfHook::Output, 0, Accept),
        // dstnat and srcnat, the priorities nft gives those names.
        ("prerouting", Nat, NfHook::Prerouting, -100, Accept),
        ("postrouting", Nat, NfHook::Postrouting, 100, Accept),
    ] {
        out.declare(NfListObject::Chain(base_chain(
            name, kind, hook, prio, policy,
        )));
    }
}

fn zone_chains(ctx: &Ctx<'_>, out: &mut Out) {
    for (zname, _) in ctx.zones() {
        for dir in ["input", "forward", "output"] {
            out.declare(NfListObject::Chain(chain(&format!("{dir}_{zname}"))));
        }
    }
}

/// Replies to our own connections skip every other rule, and packets conntrack cannot
/// place are dropped before any rule could accept them.
fn fast_path(chain: &str, out: &mut Out) {
    out.rule(
        chain,
        vec![
            has_flags(ct("state"), &["established", "related"]),
            accept(),
        ],
        None,
    );
    out.rule(
        chain,
        vec![has_flags(ct("state"), &["invalid"]), drop_()],
        None,
    );
}

/// `iifname`/`oifname` dispatch to the per-zone chains; a link in no zone falls through
/// to the base chain's policy.
fn dispatch(ctx: &Ctx<'_>, chain: &str, key: MetaKey, out: &mut Out) {
    let targets: Vec<(String, String)> = ctx
        .zoned_links()
        .map(|(zn, l)| (l.to_string(), format!("{chain}_{zn}")))
        .collect();
    if !targets.is_empty() {
        out.rule(chain, vec![jump_map(key, targets)], None);
    }
}

fn input_base(ctx: &Ctx<'_>, out: &mut Out) {
    fast_path("input", out);
    out.rule(
        "input",
        vec![matches(meta(MetaKey::Iif), s("lo")), accept()],
        None,
    );
    out.rule(
        "input",
        vec![
            matches(payload("icmpv6", "type"), names(ICMPV6_ND)),
            accept(),
        ],
        Some("ipv6 neighbour and router discovery".into()),
    );
    let servers: Vec<&str> = ctx.cfg.dhcp.keys().map(IfName::as_str).collect();
    if !servers.is_empty() {
        out.rule(
            "input",
            vec![
                matches(meta(MetaKey::Iifname), names(servers)),
                matches(payload("udp", "dport"), Expression::Number(67)),
                counter(),
                accept(),
            ],
            Some("dhcp server".into()),
        );
    }
    let clients: Vec<&str> = ctx
        .zoned_links()
        .map(|(_, l)| l)
        .chain(ctx.cfg.interfaces.keys())
        .chain(ctx.cfg.vlans.keys())
        .chain(ctx.cfg.bridges.keys())
        .filter(|l| ctx.link_ipv4_mode(l) == Some(Ipv4Mode::Dhcp))
        .map(IfName::as_str)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !clients.is_empty() {
        out.rule(
            "input",
            vec![
                matches(meta(MetaKey::Iifname), names(clients)),
                matches(payload("udp", "sport"), Expression::Number(67)),
                matches(payload("udp", "dport"), Expression::Number(68)),
                counter(),
                accept(),
            ],
            Some("dhcp client".into()),
        );
    }
    dispatch(ctx, "input", MetaKey::Iifname, out);
}

fn forward_base(ctx: &Ctx<'_>, out: &mut Out) {
    fast_path("forward", out);
    dispatch(ctx, "forward", MetaKey::Iifname, out);
}

fn output_base(ctx: &Ctx<'_>, out: &mut Out) {
    fast_path("output", out);
    dispatch(ctx, "output", MetaKey::Oifname, out);
}

/// The verdict that ends a zone chain. A reject answers TCP with a reset and everything
/// else with ICMP port unreachable, as a closed port would.
fn zone_default(chain: &str, v: Verdict, label: String, out: &mut Out) {
    if v == Verdict::Reject {
        out.rule(
            chain,
            vec![
                matches(meta(MetaKey::L4proto), s("tcp")),
                counter(),
                tcp_reset(),
            ],
            Some(label.clone()),
        );
        out.rule(chain, vec![counter(), reject_icmpx()], Some(label));
    } else {
        out.rule(chain, vec![counter(), verdict(v, false)], Some(label));
    }
}

fn input_zone(ctx: &Ctx<'_>, zname: &Name, zone: &Zone, out: &mut Out) {
    let chain = format!("input_{zname}");
    for (i, r) in ctx.cfg.firewall.rules.iter().enumerate() {
        if r.enabled && r.to.is_none() && r.from.as_ref().is_none_or(|f| f == zname) {
            for body in rule_bodies(i, r, out) {
                out.rule(&chain, body, Some(rule_label(i, r)));
            }
        }
    }
    zone_default(&chain, zone.input, format!("zone {zname} input"), out);
}

fn forward_zone(ctx: &Ctx<'_>, zname: &Name, zone: &Zone, out: &mut Out) {
    let chain = format!("forward_{zname}");
    for (i, r) in ctx.cfg.firewall.rules.iter().enumerate() {
        let Some(to) = &r.to else { continue };
        let to_links = ctx.links(to);
        if !r.enabled || to_links.is_empty() || r.from.as_ref().is_some_and(|f| f != zname) {
            continue;
        }
        for body in rule_bodies(i, r, out) {
            let mut expr = vec![matches(meta(MetaKey::Oifname), names(to_links.clone()))];
            expr.extend(body);
            out.rule(&chain, expr, Some(rule_label(i, r)));
        }
    }
    for p in ctx
        .cfg
        .firewall
        .policies
        .iter()
        .filter(|p| &p.from == zname)
    {
        let to_links = ctx.links(&p.to);
        if to_links.is_empty() {
            continue;
        }
        out.rule(
            &chain,
            vec![
                matches(meta(MetaKey::Oifname), names(to_links)),
                counter(),
                verdict(p.action, false),
            ],
            Some(format!("policy {} to {}", p.from, p.to)),
        );
    }
    // Port forwards were decided in prerouting (source restrictions included); what they
    // let in must not die on this zone's default.
    out.rule(
        &chain,
        vec![has_flags(ct("status"), &["dnat"]), counter(), accept()],
        Some("port forwards".into()),
    );
    zone_default(&chain, zone.forward, format!("zone {zname} forward"), out);
}

fn output_zone(zname: &Name, zone: &Zone, out: &mut Out) {
    let chain = format!("output_{zname}");
    zone_default(&chain, zone.output, format!("zone {zname} output"), out);
}

/// What status and logs call a rule: its name, else its place in the file.
fn rule_label(i: usize, r: &CfgRule) -> String {
    r.name
        .as_ref()
        .map_or_else(|| format!("rules[{i}]"), ToString::to_string)
}

fn l4proto(p: Protocol) -> Option<Expr> {
    let one = |name: &'static str| Some(s(name));
    match p {
        Protocol::Any => None,
        Protocol::Tcp => one("tcp"),
        Protocol::Udp => one("udp"),
        Protocol::TcpUdp => Some(names(["tcp", "udp"])),
        Protocol::Icmp => one("icmp"),
        Protocol::Icmpv6 => one("ipv6-icmp"),
    }
}

fn split_family(cs: &[Cidr]) -> (Vec<&Cidr>, Vec<&Cidr>) {
    cs.iter().partition(|c| c.is_ipv4())
}

/// The name of a rule's named address set: `<rule name>.src4`, or `rules.<i>.dst6` for a
/// rule without a name. Config names cannot hold a dot, so these never meet the zone sets
/// (`<zone>_addr4`), the forward maps or each other.
pub fn address_set_name(i: usize, r: &CfgRule, dir: &str, proto: &str) -> String {
    let fam = if proto == "ip" { "4" } else { "6" };
    match &r.name {
        Some(n) => format!("{n}.{dir}{fam}"),
        None => format!("rules.{i}.{dir}{fam}"),
    }
}

/// How many long lists [`compact`] remembers: the sets of a config or two. Each entry
/// keeps a copy of its list (about 2 MB for 100k addresses), so few.
const COMPACT_MEMO: usize = 4;

/// The compact sets computed last, by their list. Rendering is otherwise pure; this only
/// saves the sort of a 100k-address blocklist on every apply (it almost never changes),
/// and hands out the same `Arc` again, which the plan then compares by pointer.
static COMPACT: std::sync::Mutex<Vec<(Vec<Cidr>, Networks)>> = std::sync::Mutex::new(Vec::new());

/// [`disjoint`] of `cs` as a shared set, from the memo when the list is one seen lately.
fn compact(cs: &[&Cidr]) -> Networks {
    let same = |(list, _): &&(Vec<Cidr>, Networks)| {
        list.len() == cs.len() && list.iter().zip(cs).all(|(a, b)| a == *b)
    };
    let mut memo = COMPACT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, nets)) = memo.iter().find(same) {
        return Arc::clone(nets);
    }
    let nets = Arc::new(disjoint(cs));
    if memo.len() >= COMPACT_MEMO {
        memo.remove(0);
    }
    memo.push((cs.iter().map(|c| **c).collect(), Arc::clone(&nets)));
    nets
}

/// Networks sorted and without those inside another one: an interval set refuses
/// overlapping elements (an anonymous set merges them quietly).
fn disjoint(cs: &[&Cidr]) -> Vec<IpNet> {
    let mut sorted: Vec<IpNet> = cs.iter().map(|c| c.network()).collect();
    // by address, then the shorter prefix (the larger network) first
    sorted.sort_unstable();
    let mut out: Vec<IpNet> = Vec::with_capacity(sorted.len());
    for n in sorted {
        if !out.last().is_some_and(|k| k.contains(&n)) {
            out.push(n);
        }
    }
    out
}

/// The right-hand side of an address match: the networks inline (an anonymous set), or,
/// above [`NAMED_SET_THRESHOLD`], a reference to a named set declared once.
fn address_match(
    out: &mut Out,
    name: String,
    proto: &'static str,
    field: &'static str,
    cs: &[&Cidr],
) -> Stmt {
    if cs.len() <= NAMED_SET_THRESHOLD {
        return matches(payload(proto, field), networks(cs));
    }
    let reference = s(format!("@{name}"));
    if out.address_sets.insert(name.clone()) {
        let nets = compact(cs);
        let prefixed = nets.iter().any(|n| n.prefix_len() != n.max_prefix_len());
        let set = Set {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.into(),
            handle: None,
            set_type: SetTypeValue::Single(if proto == "ip" {
                SetType::Ipv4Addr
            } else {
                SetType::Ipv6Addr
            }),
            policy: None,
            flags: prefixed.then(|| [SetFlag::Interval].into_iter().collect()),
            elem: None,
            timeout: None,
            gc_interval: None,
            size: None,
            comment: None,
        };
        out.compact.push((set, nets));
    }
    matches(payload(proto, field), reference)
}

/// Address matches per family. A rule whose networks are all IPv4 must not match IPv6
/// packets (and the reverse), so each family present gets its own nft rule; a rule with
/// no networks gets one family-less rule.
fn family_matches(i: usize, r: &CfgRule, out: &mut Out) -> Vec<Vec<Stmt>> {
    if r.source.is_empty() && r.destination.is_empty() {
        return vec![Vec::new()];
    }
    let (s4, s6) = split_family(&r.source);
    let (d4, d6) = split_family(&r.destination);
    let mut variants = Vec::new();
    for (proto, src, dst, excluded) in [
        ("ip", s4, d4, Protocol::Icmpv6),
        ("ip6", s6, d6, Protocol::Icmp),
    ] {
        let usable = |given: &[Cidr], fam: &[&Cidr]| given.is_empty() || !fam.is_empty();
        if r.protocol == excluded || !usable(&r.source, &src) || !usable(&r.destination, &dst) {
            continue;
        }
        let mut m = Vec::new();
        if !src.is_empty() {
            let name = address_set_name(i, r, "src", proto);
            m.push(address_match(out, name, proto, "saddr", &src));
        }
        if !dst.is_empty() {
            let name = address_set_name(i, r, "dst", proto);
            m.push(address_match(out, name, proto, "daddr", &dst));
        }
        variants.push(m);
    }
    variants
}

fn limit(r: &CfgRule) -> Option<Stmt> {
    r.rate_limit.as_ref().map(|rl| {
        Statement::Limit(Limit {
            rate: rl.count,
            rate_unit: None,
            per: Some(rl.per.as_str().into()),
            burst: Some(rl.burst.unwrap_or(DEFAULT_BURST)),
            burst_unit: None,
            inv: None,
        })
    })
}

/// The nft rules (one per address family in use) that a config rule becomes, without
/// the chain-specific `oifname` match.
fn rule_bodies(i: usize, r: &CfgRule, out: &mut Out) -> Vec<Vec<Stmt>> {
    let label = rule_label(i, r);
    family_matches(i, r, out)
        .into_iter()
        .map(|fam| {
            let mut e = Vec::new();
            if let Some(p) = l4proto(r.protocol) {
                e.push(matches(meta(MetaKey::L4proto), p));
            }
            e.extend(fam);
            if !r.source_ports.is_empty() {
                e.push(matches(payload("th", "sport"), ports(&r.source_ports)));
            }
            if !r.ports.is_empty() {
                e.push(matches(payload("th", "dport"), ports(&r.ports)));
            }
            e.extend(limit(r));
            e.push(counter());
            if r.log {
                e.push(log(format!("appliance {label}: ")));
            }
            e.push(verdict(r.action, r.protocol == Protocol::Tcp));
            e
        })
        .collect()
}

fn forward_l4proto(p: ForwardProtocol) -> Expr {
    match p {
        ForwardProtocol::Tcp => s("tcp"),
        ForwardProtocol::Udp => s("udp"),
        ForwardProtocol::TcpUdp => names(["tcp", "udp"]),
    }
}

/// The DNAT port: a single port as is, an unshifted range kept (the port is preserved),
/// a shifted range through a map so that each external port has its own internal one.
fn dnat_port(f: &PortForward) -> Option<Expr> {
    let to = f.to_port.unwrap_or(f.port);
    if f.port.len() == 1 {
        return Some(port(&to));
    }
    if to == f.port {
        return None;
    }
    let pairs = (f.port.first.get()..=f.port.last.get())
        .zip(to.first.get()..=to.last.get())
        .map(|(a, b)| {
            SetItem::Mapping(
                Expression::Number(u32::from(a)),
                Expression::Number(u32::from(b)),
            )
        })
        .collect();
    Some(Expression::Named(NamedExpression::Map(Box::new(Map {
        key: payload("th", "dport"),
        data: Expression::Named(NamedExpression::Set(pairs)),
    }))))
}

fn dnat(f: &PortForward) -> Stmt {
    Statement::DNAT(Some(NAT {
        addr: Some(s(f.to.to_string())),
        family: Some(NATFamily::IP),
        port: dnat_port(f),
        flags: None,
    }))
}

/// The start of a forward's DNAT rule: the input links of its zone (none for a hairpin
/// forward) and its IPv4 sources; `None` when the forward can match nothing.
fn forward_start<'f>(ctx: &Ctx<'_>, f: &'f PortForward) -> Option<(Vec<Stmt>, Vec<&'f Cidr>)> {
    let (src4, _) = split_family(&f.source);
    // The forward is IPv4 only: a source list without IPv4 networks admits nobody.
    if !f.source.is_empty() && src4.is_empty() {
        return None;
    }
    let mut e = Vec::new();
    if !f.hairpin {
        let links = ctx.links(&f.from);
        if links.is_empty() {
            return None;
        }
        e.push(matches(meta(MetaKey::Iifname), names(links)));
    }
    Some((e, src4))
}

fn forward_rule(ctx: &Ctx<'_>, f: &PortForward) -> Option<Vec<Stmt>> {
    let (mut e, src4) = forward_start(ctx, f)?;
    e.push(matches(
        payload("ip", "daddr"),
        s(format!("@{}", zone_set_name(f.from.as_str()))),
    ));
    if !src4.is_empty() {
        e.push(matches(payload("ip", "saddr"), networks(&src4)));
    }
    e.push(matches(meta(MetaKey::L4proto), forward_l4proto(f.protocol)));
    e.push(matches(payload("th", "dport"), port(&f.port)));
    e.push(counter());
    e.push(dnat(f));
    Some(e)
}

/// Name of a zone's verdict map from protocol and port to the forward's chain. Zone names
/// hold no dot: no set of the table can have it.
pub fn forward_map_name(zone: &str) -> String {
    format!("{zone}.forwards")
}

/// `map <zone>.forwards { type inet_proto . inet_service : verdict }` with its elements.
/// A named map, not the rule's own: adding a forward is one element, and the dispatch
/// rule is never rewritten.
fn forward_map(name: &str, targets: Vec<(Expr, String)>) -> MapDecl<'static> {
    let elems: Vec<Expr> = targets
        .into_iter()
        .map(|(key, chain)| Expression::List(vec![key, jump(chain)]))
        .collect();
    MapDecl {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.to_owned().into(),
        handle: None,
        set_type: SetTypeValue::Concatenated(vec![SetType::InetProto, SetType::InetService].into()),
        map: SetTypeValue::Single(VERDICT_PLACEHOLDER),
        policy: None,
        flags: None,
        elem: (!elems.is_empty()).then(|| elems.into()),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }
}

/// Name of the chain that holds one port forward's DNAT rule.
pub fn forward_chain_name(forward: &str) -> String {
    format!("fwd_{forward}")
}

fn forward_protocols(p: ForwardProtocol) -> &'static [&'static str] {
    match p {
        ForwardProtocol::Tcp => &["tcp"],
        ForwardProtocol::Udp => &["udp"],
        ForwardProtocol::TcpUdp => &["tcp", "udp"],
    }
}

/// The DNAT rule of a single-port forward inside its own chain: the dispatch map already
/// matched the zone address, protocol and port.
fn forward_chain_rule(ctx: &Ctx<'_>, f: &PortForward) -> Option<Vec<Stmt>> {
    let (mut e, src4) = forward_start(ctx, f)?;
    if !src4.is_empty() {
        e.push(matches(payload("ip", "saddr"), networks(&src4)));
    }
    // nft accepts a DNAT port only after a transport protocol match
    e.push(matches(meta(MetaKey::L4proto), forward_l4proto(f.protocol)));
    e.push(counter());
    e.push(dnat(f));
    Some(e)
}

/// Port forwards. A single-port forward gets a chain of its own, `fwd_<name>`, reached
/// through one named verdict map per zone (`<zone>.forwards`) keyed by protocol and
/// port, so that adding or removing a forward adds or removes one small chain and one map
/// element, no rule is rewritten, and every other forward keeps its counter. Port ranges (and a second forward of
/// an already mapped zone, protocol and port) stay plain rules after the dispatch.
fn prerouting(ctx: &Ctx<'_>, out: &mut Out) {
    let mut dispatch: std::collections::BTreeMap<&Name, Vec<(Expr, String)>> =
        std::collections::BTreeMap::new();
    let mut taken = BTreeSet::new();
    let mut direct = Vec::new();
    for (name, f) in ctx.cfg.firewall.forwards.iter().filter(|(_, f)| f.enabled) {
        let protos = forward_protocols(f.protocol);
        let port = f.port.first.get();
        let free = protos
            .iter()
            .all(|p| !taken.contains(&(f.from.as_str(), *p, port)));
        if f.port.len() == 1 && free {
            let Some(rule) = forward_chain_rule(ctx, f) else {
                continue;
            };
            let chain_name = forward_chain_name(name.as_str());
            out.declare(NfListObject::Chain(chain(&chain_name)));
            out.rule(&chain_name, rule, Some(format!("forward {name}")));
            for p in protos {
                taken.insert((f.from.as_str(), *p, port));
                let key = Expression::Named(NamedExpression::Concat(vec![
                    s(*p),
                    Expression::Number(u32::from(port)),
                ]));
                dispatch
                    .entry(&f.from)
                    .or_default()
                    .push((key, chain_name.clone()));
            }
        } else if let Some(e) = forward_rule(ctx, f) {
            direct.push((e, format!("forward {name}")));
        }
    }
    for (zone, targets) in dispatch {
        let map = forward_map_name(zone.as_str());
        out.declare(NfListObject::Map(Box::new(forward_map(&map, targets))));
        out.rule(
            "prerouting",
            vec![
                matches(
                    payload("ip", "daddr"),
                    s(format!("@{}", zone_set_name(zone.as_str()))),
                ),
                Statement::VerdictMap(nftables::stmt::VerdictMap {
                    key: Expression::Named(NamedExpression::Concat(vec![
                        meta(MetaKey::L4proto),
                        payload("th", "dport"),
                    ])),
                    data: s(format!("@{map}")),
                }),
            ],
            Some(format!("port forwards from {zone}")),
        );
    }
    for (e, comment) in direct {
        out.rule("prerouting", e, Some(comment));
    }
}

/// Links that hold the target of a hairpin forward: a client there that is DNATed to a
/// neighbour on the same link must see the reply come from the router, so the connection
/// is masqueraded too.
fn hairpin_links<'a>(ctx: &'a Ctx<'_>) -> BTreeSet<&'a IfName> {
    ctx.cfg
        .firewall
        .forwards
        .values()
        .filter(|f| f.enabled && f.hairpin)
        .filter_map(|f| {
            let target = IpAddr::V4(f.to);
            ctx.zoned_links()
                .map(|(_, l)| l)
                .find(|l| ctx.link_addresses(l).iter().any(|c| c.contains(&target)))
        })
        .collect()
}

fn postrouting(ctx: &Ctx<'_>, out: &mut Out) {
    for link in hairpin_links(ctx) {
        out.rule(
            "postrouting",
            vec![
                matches(meta(MetaKey::Iifname), s(link.to_string())),
                matches(meta(MetaKey::Oifname), s(link.to_string())),
                has_flags(ct("status"), &["dnat"]),
                counter(),
                Statement::Masquerade(None),
            ],
            Some(format!("hairpin {link}")),
        );
    }
    for (zname, _) in ctx.zones().filter(|(_, z)| z.masquerade) {
        let links = ctx.links(zname);
        if links.is_empty() {
            continue;
        }
        // IPv4 only: IPv6 clients have addresses of their own and need no NAT.
        out.rule(
            "postrouting",
            vec![
                matches(meta(MetaKey::Nfproto), s("ipv4")),
                matches(meta(MetaKey::Oifname), names(links)),
                counter(),
                Statement::Masquerade(None),
            ],
            Some(format!("masquerade {zname}")),
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// Every feature of the firewall section at least once.
    pub(crate) const RICH: &str = include_str!("../../tests/configs/rich.toml");

    pub(crate) fn rich() -> Ruleset {
        render(&appliance::load_str(RICH).unwrap())
    }

    fn objects(rs: &Ruleset) -> Vec<Value> {
        rs.objects()
            .iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect()
    }

    /// The rules of one chain, in order, as JSON.
    fn chain_rules(rs: &Ruleset, chain: &str) -> Vec<Value> {
        objects(rs)
            .into_iter()
            .filter_map(|o| o.get("rule").cloned())
            .filter(|r| r["chain"] == chain)
            .collect()
    }

    fn comments(rs: &Ruleset, chain: &str) -> Vec<String> {
        chain_rules(rs, chain)
            .iter()
            .map(|r| r["comment"].as_str().unwrap_or("-").to_owned())
            .collect()
    }

    fn with_comment(rs: &Ruleset, chain: &str, comment: &str) -> Vec<Value> {
        chain_rules(rs, chain)
            .into_iter()
            .filter(|r| r["comment"] == comment)
            .map(|r| r["expr"].clone())
            .collect()
    }

    fn m(left: Value, right: Value) -> Value {
        json!({"match": {"left": left, "right": right, "op": "=="}})
    }
    fn meta(key: &str) -> Value {
        json!({"meta": {"key": key}})
    }
    fn pl(protocol: &str, field: &str) -> Value {
        json!({"payload": {"protocol": protocol, "field": field}})
    }
    fn counter() -> Value {
        json!({"counter": {"packets": 0, "bytes": 0}})
    }

    #[test]
    fn base_chains_hook_in_with_their_policies() {
        let chains: Vec<Value> = objects(&rich())
            .into_iter()
            .filter_map(|o| o.get("chain").cloned())
            .filter(|c| c.get("hook").is_some())
            .collect();
        let summary: Vec<_> = chains
            .iter()
            .map(|c| {
                format!(
                    "{} {} {} {} {}",
                    c["name"], c["type"], c["hook"], c["prio"], c["policy"]
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                r#""input" "filter" "input" 0 "drop""#,
                r#""forward" "filter" "forward" 0 "drop""#,
                r#""output" "filter" "output" 0 "accept""#,
                r#""prerouting" "nat" "prerouting" -100 "accept""#,
                r#""postrouting" "nat" "postrouting" 100 "accept""#,
            ]
        );
        for c in &chains {
            assert_eq!(c["family"], "inet");
            assert_eq!(c["table"], "appliance");
        }
    }

    #[test]
    fn declarations_precede_rules() {
        let kinds: Vec<String> = objects(&rich())
            .iter()
            .map(|o| o.as_object().unwrap().keys().next().unwrap().clone())
            .collect();
        let first_rule = kinds.iter().position(|k| k == "rule").unwrap();
        assert!(kinds[first_rule..].iter().all(|k| k == "rule"));
        assert_eq!(kinds[..3], ["set", "set", "set"]);
    }

    #[test]
    fn fast_path_comes_first_in_every_filter_chain() {
        let rs = rich();
        for chain in ["input", "forward", "output"] {
            let rules = chain_rules(&rs, chain);
            assert_eq!(
                rules[0]["expr"],
                json!([
                    {"match": {"left": {"ct": {"key": "state"}}, "right": ["established", "related"], "op": "in"}},
                    {"accept": null}
                ])
            );
            assert_eq!(
                rules[1]["expr"],
                json!([
                    {"match": {"left": {"ct": {"key": "state"}}, "right": ["invalid"], "op": "in"}},
                    {"drop": null}
                ])
            );
        }
    }

    #[test]
    fn input_accepts_loopback_neighbour_discovery_and_dhcp() {
        let rs = rich();
        let rules = chain_rules(&rs, "input");
        assert_eq!(
            rules[2]["expr"],
            json!([m(meta("iif"), json!("lo")), {"accept": null}])
        );
        let nd = &with_comment(&rs, "input", "ipv6 neighbour and router discovery")[0];
        assert_eq!(
            nd[0],
            m(
                pl("icmpv6", "type"),
                json!({"set": ["nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert"]})
            )
        );
        assert_eq!(
            with_comment(&rs, "input", "dhcp server"),
            [
                json!([m(meta("iifname"), json!("lan")), m(pl("udp", "dport"), json!(67)), counter(), {"accept": null}])
            ]
        );
        assert_eq!(
            with_comment(&rs, "input", "dhcp client"),
            [json!([
                m(meta("iifname"), json!("wan")),
                m(pl("udp", "sport"), json!(67)),
                m(pl("udp", "dport"), json!(68)),
                counter(),
                {"accept": null}
            ])]
        );
    }

    #[test]
    fn links_dispatch_to_their_zone_chains() {
        let rs = rich();
        for (chain, key) in [
            ("input", "iifname"),
            ("forward", "iifname"),
            ("output", "oifname"),
        ] {
            let last = chain_rules(&rs, chain).pop().unwrap();
            let jump = |l: &str, z: &str| json!([l, {"jump": {"target": format!("{chain}_{z}")}}]);
            assert_eq!(
                last["expr"],
                json!([{"vmap": {"key": meta(key), "data": {"set": [
                    jump("guest", "guest"), jump("lan", "lan"), jump("wan", "wan")
                ]}}}]),
                "{chain}"
            );
        }
    }

    #[test]
    fn zone_chains_end_with_the_zone_defaults() {
        let rs = rich();
        assert_eq!(
            comments(&rs, "input_wan"),
            ["ssh-admin", "ssh-admin", "any-zone", "zone wan input"]
        );
        assert_eq!(
            chain_rules(&rs, "input_wan").pop().unwrap()["expr"],
            json!([counter(), {"drop": null}])
        );
        assert_eq!(
            chain_rules(&rs, "output_lan")[0]["expr"],
            json!([counter(), {"accept": null}])
        );
        // reject: TCP gets a reset, the rest ICMP port unreachable
        let guest = with_comment(&rs, "input_guest", "zone guest input");
        assert_eq!(
            guest,
            [
                json!([m(meta("l4proto"), json!("tcp")), counter(), {"reject": {"type": "tcp reset"}}]),
                json!([counter(), {"reject": {"type": "icmpx", "expr": "port-unreachable"}}]),
            ]
        );
    }

    #[test]
    fn input_rule_renders_every_match_per_family() {
        let rs = rich();
        let ssh = with_comment(&rs, "input_wan", "ssh-admin");
        assert_eq!(ssh.len(), 2, "one nft rule per address family");
        let tail = |fam: &str, net: Value| {
            json!([
                m(meta("l4proto"), json!("tcp")),
                m(pl(fam, "saddr"), net),
                m(pl("th", "sport"), json!({"range": [1024, 65535]})),
                m(pl("th", "dport"), json!({"set": [22, {"range": [8000, 8100]}]})),
                {"limit": {"rate": 10, "per": "minute", "burst": 20}},
                counter(),
                {"log": {"prefix": "appliance ssh-admin: "}},
                {"accept": null}
            ])
        };
        assert_eq!(
            ssh[0],
            tail("ip", json!({"prefix": {"addr": "203.0.113.0", "len": 24}}))
        );
        assert_eq!(
            ssh[1],
            tail("ip6", json!({"prefix": {"addr": "2001:db8::", "len": 32}}))
        );
        assert!(with_comment(&rs, "input_lan", "ssh-admin").is_empty());
    }

    /// The default router plus an unnamed rule (no zone: every input chain) with `n` IPv4
    /// sources, the first inside the second, and a /24.
    pub(crate) fn with_long_source(n: usize) -> Ruleset {
        let mut src = appliance::DEFAULT_CONFIG.to_owned();
        src.push_str(
            "\n[[firewall.rules]]\naction = \"drop\"\nsource = [\"100.64.0.7\", \"100.64.0.0/24\"",
        );
        for i in 0..n.saturating_sub(2) {
            src.push_str(&format!(", \"100.65.{}.{}\"", i / 250, i % 250));
        }
        src.push_str("]\n");
        render(&appliance::load_str(&src).unwrap())
    }

    #[test]
    fn a_long_address_list_is_a_named_set_shared_by_its_rules() {
        let short = with_long_source(NAMED_SET_THRESHOLD);
        assert!(short.address_sets().is_empty());
        assert!(to_string(&short).contains(r#""set":["#));

        let rs = with_long_source(NAMED_SET_THRESHOLD + 1);
        let name = "rules.3.src4";
        let nets = &rs.address_sets()[name];
        // 100.64.0.7 is inside 100.64.0.0/24: an interval set refuses the overlap
        assert_eq!(nets.len(), NAMED_SET_THRESHOLD);
        assert_eq!(nets[0].to_string(), "100.64.0.0/24");
        let sets: Vec<Value> = objects(&rs)
            .into_iter()
            .filter_map(|o| o.get("set").cloned())
            .filter(|s| s["name"] == name)
            .collect();
        assert_eq!(sets.len(), 1, "declared once for every zone's chain");
        assert_eq!(sets[0]["flags"], json!(["interval"]));
        assert!(sets[0].get("elem").is_none(), "kept compact in the ruleset");
        for zone in ["wan", "lan"] {
            assert_eq!(
                with_comment(&rs, &format!("input_{zone}"), "rules[3]"),
                [json!([m(pl("ip", "saddr"), json!("@rules.3.src4")), counter(), {"drop": null}])]
            );
        }
        // the batch carries the elements
        let batch: Value = serde_json::from_str(&rs.to_json()).unwrap();
        let sent = batch["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["add"]["set"]["name"] == name)
            .unwrap();
        let elems = sent["add"]["set"]["elem"].as_array().unwrap();
        assert_eq!(elems.len(), NAMED_SET_THRESHOLD);
        assert_eq!(
            elems[0],
            json!({"prefix": {"addr": "100.64.0.0", "len": 24}})
        );
        assert_eq!(elems[1], json!("100.65.0.0"));
    }

    fn to_string(rs: &Ruleset) -> String {
        serde_json::to_string(rs.objects()).unwrap()
    }

    #[test]
    fn forward_rule_matches_the_destination_zone_links_and_one_family() {
        let rs = rich();
        let r = with_comment(&rs, "forward_guest", "rules[1]");
        assert_eq!(
            r,
            [json!([
                m(meta("oifname"), json!("lan")),
                m(meta("l4proto"), json!("udp")),
                m(pl("ip", "daddr"), json!("192.168.1.1")),
                m(pl("th", "dport"), json!(53)),
                counter(),
                {"reject": {"type": "icmpx", "expr": "port-unreachable"}}
            ])]
        );
    }

    #[test]
    fn rule_without_zone_goes_to_every_input_chain_and_disabled_rules_vanish() {
        let rs = rich();
        for zone in ["wan", "lan", "guest"] {
            let r = with_comment(&rs, &format!("input_{zone}"), "any-zone");
            assert_eq!(
                r,
                [json!([
                    m(meta("l4proto"), json!({"set": ["tcp", "udp"]})),
                    m(pl("th", "dport"), json!(5353)),
                    counter(),
                    {"drop": null}
                ])]
            );
        }
        assert!(!rs.to_json().contains("\"off\""));
    }

    #[test]
    fn forward_chain_orders_rules_policies_dnat_and_default() {
        let rs = rich();
        assert_eq!(
            comments(&rs, "forward_lan"),
            ["policy lan to wan", "port forwards", "zone lan forward"]
        );
        assert_eq!(
            comments(&rs, "forward_guest"),
            [
                "rules[1]",
                "policy guest to wan",
                "port forwards",
                "zone guest forward"
            ]
        );
        assert_eq!(
            with_comment(&rs, "forward_lan", "policy lan to wan"),
            [json!([m(meta("oifname"), json!("wan")), counter(), {"accept": null}])]
        );
        assert_eq!(
            with_comment(&rs, "forward_wan", "port forwards"),
            [json!([
                {"match": {"left": {"ct": {"key": "status"}}, "right": ["dnat"], "op": "in"}},
                counter(),
                {"accept": null}
            ])]
        );
    }

    #[test]
    fn port_forwards_dnat_on_the_zone_address_set() {
        let rs = rich();
        // single ports first, through the zone's dispatch map; port ranges after it
        assert_eq!(
            comments(&rs, "prerouting"),
            ["port forwards from wan", "forward games", "forward shifted"]
        );
        let daddr = m(pl("ip", "daddr"), json!("@wan_addr4"));
        assert_eq!(
            with_comment(&rs, "prerouting", "port forwards from wan"),
            [json!([
                daddr,
                {"vmap": {
                    "key": {"concat": [meta("l4proto"), pl("th", "dport")]},
                    "data": "@wan.forwards"
                }}
            ])]
        );
        // the map is the table's, so that a forward is one element; its data type reaches
        // nft as "verdict"
        let map = objects(&rs)
            .into_iter()
            .find_map(|o| o.get("map").cloned())
            .unwrap();
        assert_eq!(
            map,
            json!({"family": "inet", "table": "appliance", "name": "wan.forwards",
                "type": ["inet_proto", "inet_service"], "map": "mark",
                "elem": [[{"concat": ["tcp", 443]}, {"jump": {"target": "fwd_web"}}]]})
        );
        assert!(rs.to_json().contains(
            r#""name":"wan.forwards","type":["inet_proto","inet_service"],"map":"verdict""#
        ));
        assert!(!rs.to_json().contains(r#""map":"mark""#));
        // hairpin (default): any input link; its own chain, with its own counter
        assert_eq!(comments(&rs, "fwd_web"), ["forward web"]);
        assert_eq!(
            with_comment(&rs, "fwd_web", "forward web"),
            [json!([
                m(meta("l4proto"), json!("tcp")),
                counter(),
                {"dnat": {"addr": "192.168.1.10", "family": "ip", "port": 8443}}
            ])]
        );
        // no hairpin: only from the zone's links; an unshifted range keeps the port
        assert_eq!(
            with_comment(&rs, "prerouting", "forward games"),
            [json!([
                m(meta("iifname"), json!("wan")),
                daddr,
                m(meta("l4proto"), json!("udp")),
                m(pl("th", "dport"), json!({"range": [27015, 27017]})),
                counter(),
                {"dnat": {"addr": "192.168.1.20", "family": "ip"}}
            ])]
        );
        // a shifted range maps port to port; source restricts who may use it
        assert_eq!(
            with_comment(&rs, "prerouting", "forward shifted"),
            [json!([
                daddr,
                m(pl("ip", "saddr"), json!({"prefix": {"addr": "198.51.100.0", "len": 24}})),
                m(meta("l4proto"), json!({"set": ["tcp", "udp"]})),
                m(pl("th", "dport"), json!({"range": [9000, 9002]})),
                counter(),
                {"dnat": {"addr": "192.168.1.30", "family": "ip", "port": {"map": {
                    "key": pl("th", "dport"),
                    "data": {"set": [[9000, 8000], [9001, 8001], [9002, 8002]]}
                }}}}
            ])]
        );
    }

    #[test]
    fn postrouting_hairpins_target_links_and_masquerades_zones() {
        let rs = rich();
        assert_eq!(
            comments(&rs, "postrouting"),
            ["hairpin lan", "masquerade wan"]
        );
        assert_eq!(
            with_comment(&rs, "postrouting", "hairpin lan"),
            [json!([
                m(meta("iifname"), json!("lan")),
                m(meta("oifname"), json!("lan")),
                {"match": {"left": {"ct": {"key": "status"}}, "right": ["dnat"], "op": "in"}},
                counter(),
                {"masquerade": null}
            ])]
        );
        assert_eq!(
            with_comment(&rs, "postrouting", "masquerade wan"),
            [json!([
                m(meta("nfproto"), json!("ipv4")),
                m(meta("oifname"), json!("wan")),
                counter(),
                {"masquerade": null}
            ])]
        );
    }

    #[test]
    fn zone_sets_hold_static_ipv4_addresses() {
        let sets: Vec<Value> = objects(&rich())
            .into_iter()
            .filter_map(|o| o.get("set").cloned())
            .collect();
        assert_eq!(
            sets,
            [
                json!({"family": "inet", "table": "appliance", "name": "guest_addr4", "type": "ipv4_addr", "elem": ["192.168.2.1"]}),
                json!({"family": "inet", "table": "appliance", "name": "lan_addr4", "type": "ipv4_addr", "elem": ["192.168.1.1"]}),
                json!({"family": "inet", "table": "appliance", "name": "wan_addr4", "type": "ipv4_addr"}),
            ]
        );
    }

    #[test]
    fn batch_replaces_the_table_whether_or_not_it_exists() {
        let batch: Value = serde_json::from_str(&rich().to_json()).unwrap();
        let cmds = batch["nftables"].as_array().unwrap();
        let table = json!({"table": {"family": "inet", "name": "appliance"}});
        assert_eq!(cmds[0], json!({"add": table}));
        assert_eq!(cmds[1], json!({"delete": table}));
        assert_eq!(cmds[2], json!({"add": table}));
        assert!(cmds[3..].iter().all(|c| c.get("add").is_some()));
    }

    #[test]
    fn zone_address_update_only_touches_the_set() {
        let batch = serde_json::to_value(crate::firewall::set_zone_addresses(
            "wan",
            &[
                "198.51.100.7".parse().unwrap(),
                "198.51.100.2".parse().unwrap(),
            ],
        ))
        .unwrap();
        assert_eq!(
            batch,
            json!({"nftables": [
                {"flush": {"set": {"family": "inet", "table": "appliance", "name": "wan_addr4", "type": "ipv4_addr"}}},
                // the set's declaration with its elements, not `add element` (no fetch of
                // the interval sets' elements by nft)
                {"add": {"set": {"family": "inet", "table": "appliance", "name": "wan_addr4",
                    "type": "ipv4_addr", "elem": ["198.51.100.2", "198.51.100.7"]}}}
            ]})
        );
        // losing the lease empties the set
        let empty = serde_json::to_value(crate::firewall::set_zone_addresses("wan", &[])).unwrap();
        assert_eq!(empty["nftables"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn rule_names_label_comments_and_logs() {
        let cfg = appliance::load_str(
            r#"
version = 1
[interfaces.lan]
device = "eth1"
addresses = ["10.0.0.1/24"]
[firewall.zones.lan]
interfaces = ["lan"]
[[firewall.rules]]
protocol = "icmp"
log = true
action = "accept"
"#,
        )
        .unwrap();
        let rs = render(&cfg);
        let r = with_comment(&rs, "input_lan", "rules[0]");
        assert_eq!(r[0][2], json!({"log": {"prefix": "appliance rules[0]: "}}));
    }

    #[test]
    fn no_zones_means_no_dispatch_and_base_policies_decide() {
        let cfg = appliance::load_str("version = 1\n").unwrap();
        let rs = render(&cfg);
        assert!(!rs.to_json().contains("vmap"));
        assert_eq!(chain_rules(&rs, "input").len(), 4);
    }
}
