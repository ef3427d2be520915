//! The blocking policy: which group a client is in, and whether a name is blocked for it
//! and why. Built from the `dns` section of appliance.toml and the compiled lists; a new
//! policy is built off to the side and swapped in whole, so queries never see half of one.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use appliance::model::{BlockMode, Config, Dns};
use appliance::types::{Cidr, DomainPattern};
use regex::RegexSet;

use crate::compiled::{CompiledList, Rule};
use crate::matcher::DomainSet;

/// What to answer for a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Resolve normally.
    Pass,
    /// Answer as `mode` says (with `addresses` for the custom mode).
    Block {
        mode: BlockMode,
        addresses: Vec<IpAddr>,
    },
}

/// Where the rule that decided came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `dns.allow` / `dns.deny`.
    Global,
    /// `dns.groups.<name>.allow` / `.deny`.
    Group(String),
    /// A block list, by name.
    List(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Global => f.write_str("dns settings"),
            Source::Group(g) => write!(f, "group {g}"),
            Source::List(l) => write!(f, "list {l}"),
        }
    }
}

/// The decision for one name and one client, with the reason, for answering and for
/// `applctl dns check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The client's group (`default` when no group matched).
    pub group: String,
    /// The rule that decided, if any: an allow rule for an allowed name, a block rule for
    /// a blocked one.
    pub rule: Option<(Source, Rule)>,
    /// Blocking is paused for this client's group (or globally) until then.
    pub paused: bool,
    /// Why blocking does not apply to this client at all, when it does not; `rule` is
    /// then the rule that would have blocked, for `check` only ([`Policy::explain`]).
    pub off: Option<Off>,
    /// `rule` would block the name, but blocking is paused or off.
    pub held: bool,
}

impl Decision {
    /// A pass that holds as long as the policy it came from: blocking was on for the
    /// client and no block was held back by a pause. (A pause only turns blocks into
    /// passes; a name that passed with blocking on passes under any pause.)
    pub fn passes_while_policy_lasts(&self) -> bool {
        self.action == Action::Pass && !self.held && self.off.is_none()
    }
}

/// Why blocking is off for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Off {
    /// `dns.enabled = false`.
    Disabled,
    /// `dns.blocking = false`, and the client's group has no setting of its own.
    Global,
    /// The client's group has `blocking = false`.
    Group,
}

/// Allow or deny entries from the config, compiled.
#[derive(Debug, Default)]
struct Patterns {
    /// An exact deny entry blocks the name's subdomains too (as a list's entry does); an
    /// exact allow entry allows that one name (as Pi-hole's exact allowlist does), so that
    /// allowing `example.com` does not open every `tracker.example.com`.
    exact_covers_subdomains: bool,
    exact: DomainSet,
    wildcard: DomainSet,
    regex_src: Vec<String>,
    regex: Option<RegexSet>,
}

impl Patterns {
    fn allow(patterns: &[DomainPattern]) -> Result<Self, String> {
        Self::compile(patterns, false)
    }

    fn deny(patterns: &[DomainPattern]) -> Result<Self, String> {
        Self::compile(patterns, true)
    }

    fn compile(patterns: &[DomainPattern], exact_covers_subdomains: bool) -> Result<Self, String> {
        let mut exact = Vec::new();
        let mut wildcard = Vec::new();
        let mut regex_src = Vec::new();
        for p in patterns {
            match p {
                DomainPattern::Exact(d) => exact.push(d.as_str().to_owned()),
                DomainPattern::Wildcard(d) => wildcard.push(d.as_str().to_owned()),
                DomainPattern::Regex(r) => regex_src.push(r.clone()),
            }
        }
        let regex = if regex_src.is_empty() {
            None
        } else {
            Some(crate::compiled::regex_set(&regex_src).map_err(|e| e.to_string())?)
        };
        Ok(Self {
            exact_covers_subdomains,
            exact: DomainSet::build(exact.iter().map(|n| (n.as_str(), 0)))
                .map_err(|e| e.to_string())?,
            wildcard: DomainSet::build(wildcard.iter().map(|n| (n.as_str(), 0)))
                .map_err(|e| e.to_string())?,
            regex_src,
            regex,
        })
    }

    fn find(&self, qname: &str) -> Option<Rule> {
        let q = qname.as_bytes();
        if self.exact_covers_subdomains {
            if let Some((hit, _)) = self.exact.find_suffix(q, false) {
                return Some(Rule::Domain(String::from_utf8_lossy(hit).into_owned()));
            }
        } else if self.exact.get(q).is_some() {
            return Some(Rule::Domain(qname.to_owned()));
        }
        if let Some((hit, _)) = self.wildcard.find_suffix(q, true) {
            return Some(Rule::Wildcard(String::from_utf8_lossy(hit).into_owned()));
        }
        let i = self.regex.as_ref()?.matches(qname).iter().next()?;
        self.regex_src.get(i).map(|r| Rule::Regex(r.clone()))
    }
}

#[derive(Debug)]
struct Group {
    name: String,
    cidrs: Vec<Cidr>,
    /// Links whose clients are in this group: its `interfaces`.
    links: Vec<String>,
    /// The links of its `zones`.
    zone_links: Vec<String>,
    lists: Vec<(String, Arc<CompiledList>)>,
    allow: Patterns,
    deny: Patterns,
    mode: BlockMode,
    blocking: bool,
    /// Set by the group itself rather than taken from `dns.blocking`.
    own_blocking: bool,
}

impl Group {
    /// How closely the group names `client` (on `link`), `None` when it does not: any
    /// CIDR of the group that holds the client, the longest prefix counting, beats an
    /// interface of the group, which beats a zone of the group.
    fn specificity(&self, client: IpAddr, link: Option<&str>) -> Option<(u8, u8)> {
        let cidr = self
            .cidrs
            .iter()
            .filter(|c| c.contains(&client))
            .map(|c| c.prefix_len())
            .max();
        let on = |links: &[String]| link.is_some_and(|l| links.iter().any(|x| x == l));
        match cidr {
            Some(prefix) => Some((2, prefix)),
            None if on(&self.links) => Some((1, 0)),
            None if on(&self.zone_links) => Some((0, 0)),
            None => None,
        }
    }
}

/// The whole policy. Cheap to share (`Arc<Policy>`); replaced whole on reload.
#[derive(Debug)]
pub struct Policy {
    enabled: bool,
    allow: Patterns,
    deny: Patterns,
    addresses: Vec<IpAddr>,
    /// Groups with clients, in name order; the most specific that matches a client wins
    /// ([`Group::specificity`]), the first in name order among equals.
    groups: Vec<Group>,
    default: Group,
    /// Blocking pauses: `None` key is global.
    pauses: BTreeMap<Option<String>, Instant>,
}

/// The lists a policy can use, by name, compiled.
pub type Lists = BTreeMap<String, Arc<CompiledList>>;

impl Policy {
    /// Builds the policy for `cfg`. Lists that are declared but not (yet) compiled are
    /// left out; they join at the next build after their first download.
    pub fn build(cfg: &Config, lists: &Lists) -> Result<Self, String> {
        let dns: &Dns = &cfg.dns;
        let enabled_lists =
            |names: &mut dyn Iterator<Item = &str>| -> Vec<(String, Arc<CompiledList>)> {
                names
                    .filter(|n| dns.lists.iter().any(|(k, l)| k.as_str() == *n && l.enabled))
                    .filter_map(|n| lists.get(n).map(|l| (n.to_owned(), Arc::clone(l))))
                    .collect()
            };
        let zone_links = |zones: &[appliance::types::Name]| -> Vec<String> {
            zones
                .iter()
                .filter_map(|z| cfg.firewall.zones.get(z))
                .flat_map(|z| z.interfaces.iter().map(|i| i.as_str().to_owned()))
                .collect()
        };
        let mut groups = Vec::new();
        let mut default = None;
        for (name, g) in &dns.groups {
            let group = Group {
                name: name.as_str().to_owned(),
                cidrs: g.cidrs.clone(),
                links: g.interfaces.iter().map(|i| i.as_str().to_owned()).collect(),
                zone_links: zone_links(&g.zones),
                lists: enabled_lists(&mut g.lists.iter().map(|l| l.as_str())),
                allow: Patterns::allow(&g.allow)?,
                deny: Patterns::deny(&g.deny)?,
                mode: g.block_mode.unwrap_or(dns.block_mode),
                // The group's own setting, when it has one, wins over the global one.
                blocking: g.blocking.unwrap_or(dns.blocking),
                own_blocking: g.blocking.is_some(),
            };
            if name.as_str() == "default" {
                default = Some(group);
            } else {
                groups.push(group);
            }
        }
        let default = match default {
            Some(d) => d,
            // Pi-hole's default group: every enabled list.
            None => Group {
                name: "default".into(),
                cidrs: Vec::new(),
                links: Vec::new(),
                zone_links: Vec::new(),
                lists: enabled_lists(&mut dns.lists.keys().map(|k| k.as_str())),
                allow: Patterns::default(),
                deny: Patterns::default(),
                mode: dns.block_mode,
                blocking: dns.blocking,
                own_blocking: false,
            },
        };
        Ok(Self {
            enabled: dns.enabled,
            allow: Patterns::allow(&dns.allow)?,
            deny: Patterns::deny(&dns.deny)?,
            addresses: dns.block_addresses.clone(),
            groups,
            default,
            pauses: BTreeMap::new(),
        })
    }

    /// Carries the pauses of a previous policy over to a rebuilt one.
    pub fn with_pauses_of(mut self, old: &Policy) -> Self {
        self.pauses = old.pauses.clone();
        self
    }

    /// Pauses blocking for `group` (or every group) until `for_` from now.
    pub fn pause(&mut self, group: Option<&str>, for_: Duration) {
        self.pauses
            .insert(group.map(str::to_owned), Instant::now() + for_);
    }

    /// Ends a pause early.
    pub fn resume(&mut self, group: Option<&str>) {
        self.pauses.remove(&group.map(str::to_owned));
    }

    fn paused(&self, group: &str, now: Instant) -> bool {
        [None, Some(group.to_owned())]
            .iter()
            .any(|k| self.pauses.get(k).is_some_and(|until| *until > now))
    }

    /// The client's group: the most specific match, so that a /32 for one laptop inside
    /// a group's /24, or a CIDR inside a zone's group, takes that client out of the wider
    /// group whatever the groups are called. Among equally specific groups the first in
    /// name order wins (validation does not refuse the overlap).
    fn group_for(&self, client: IpAddr, link: Option<&str>) -> &Group {
        let mut best: Option<(&Group, (u8, u8))> = None;
        for g in &self.groups {
            if let Some(s) = g.specificity(client, link)
                && best.is_none_or(|(_, b)| s > b)
            {
                best = Some((g, s));
            }
        }
        best.map_or(&self.default, |(g, _)| g)
    }

    /// When blocking was paused for `group` (or globally), the end of the latest pause
    /// in force.
    fn paused_until(&self, group: &str, now: Instant) -> Option<Instant> {
        [None, Some(group.to_owned())]
            .iter()
            .filter_map(|k| self.pauses.get(k).copied())
            .filter(|until| *until > now)
            .max()
    }

    /// Decides for `qname` (lowercase, without the trailing dot) asked by `client` through
    /// `link` (the link the query arrived on, when known).
    pub fn decide(&self, client: IpAddr, link: Option<&str>, qname: &str) -> Decision {
        self.decide_at(client, link, qname, Instant::now(), false)
    }

    /// `explain`: also when blocking is off, find the rule that would decide, for
    /// `check`; the query path skips that work.
    fn decide_at(
        &self,
        client: IpAddr,
        link: Option<&str>,
        qname: &str,
        now: Instant,
        explain: bool,
    ) -> Decision {
        let g = self.group_for(client, link);
        let off = if !self.enabled {
            Some(Off::Disabled)
        } else if g.blocking {
            None
        } else if g.own_blocking {
            Some(Off::Group)
        } else {
            Some(Off::Global)
        };
        let pass = |rule: Option<(Source, Rule)>, held: bool| Decision {
            action: Action::Pass,
            group: g.name.clone(),
            rule,
            paused: held && off.is_none(),
            off: off.clone(),
            held,
        };
        if off.is_some() && !explain {
            return pass(None, false);
        }
        // The administrator's allow wins over everything, then the administrator's deny;
        // a third-party list's `@@` exception only overrides the lists' own blocks, never
        // what the administrator denied (Pi-hole: the own deny list beats gravity).
        if let Some(r) = self.allow.find(qname) {
            return pass(Some((Source::Global, r)), false);
        }
        if let Some(r) = g.allow.find(qname) {
            return pass(Some((Source::Group(g.name.clone()), r)), false);
        }
        let admin = self
            .deny
            .find(qname)
            .map(|r| (Source::Global, r))
            .or_else(|| {
                g.deny
                    .find(qname)
                    .map(|r| (Source::Group(g.name.clone()), r))
            });
        let block = match admin {
            Some(rule) => Some(rule),
            None => {
                for (name, l) in &g.lists {
                    if let Some(r) = l.excepts(qname) {
                        return pass(Some((Source::List(name.clone()), r)), false);
                    }
                }
                g.lists
                    .iter()
                    .find_map(|(name, l)| l.blocks(qname).map(|r| (Source::List(name.clone()), r)))
            }
        };
        let Some(rule) = block else {
            return pass(None, false);
        };
        if off.is_some() || self.paused(&g.name, now) {
            return pass(Some(rule), true);
        }
        Decision {
            action: Action::Block {
                mode: g.mode,
                addresses: self.addresses.clone(),
            },
            group: g.name.clone(),
            rule: Some(rule),
            paused: false,
            off: None,
            held: false,
        }
    }

    /// The decision with the reason `check` gives: like [`Policy::decide`], and when
    /// blocking is off for the client, the rule that would decide if it were on.
    pub fn check(&self, client: IpAddr, link: Option<&str>, qname: &str) -> Decision {
        self.decide_at(client, link, qname, Instant::now(), true)
    }

    /// A sentence for `applctl dns check`: why the name is or is not blocked.
    pub fn explain(&self, client: IpAddr, link: Option<&str>, qname: &str) -> String {
        self.explain_at(client, link, qname, Instant::now(), SystemTime::now())
    }

    fn explain_at(
        &self,
        client: IpAddr,
        link: Option<&str>,
        qname: &str,
        now: Instant,
        wall: SystemTime,
    ) -> String {
        let d = self.decide_at(client, link, qname, now, true);
        let group = &d.group;
        let paused_until = || {
            let until = self.paused_until(group, now)?;
            let who = if self.pauses.get(&None).is_some_and(|u| *u == until) {
                "blocking is paused"
            } else {
                "blocking is paused for this group"
            };
            Some(format!(
                "{who} until {}",
                httpdate::fmt_http_date(wall + until.duration_since(now))
            ))
        };
        let off = d.off.as_ref().map(|o| match o {
            Off::Disabled => "DNS is off (dns.enabled = false)".to_owned(),
            Off::Global => "blocking is off (dns.blocking = false)".to_owned(),
            Off::Group => {
                format!("group {group} has blocking off (dns.groups.{group}.blocking = false)")
            }
        });
        match (&d.action, &d.rule) {
            (Action::Block { mode, .. }, Some((src, rule))) => format!(
                "{qname} is blocked for group {group} by rule {rule} of {src} (answered as {})",
                match mode {
                    BlockMode::Null => "0.0.0.0 / ::",
                    BlockMode::Nxdomain => "NXDOMAIN",
                    BlockMode::Nodata => "NODATA",
                    BlockMode::Custom => "the custom addresses",
                }
            ),
            (Action::Block { .. }, None) => format!("{qname} is blocked for group {group}"),
            (Action::Pass, Some((src, rule))) if d.held => {
                let why = off
                    .or_else(paused_until)
                    .unwrap_or_else(|| "blocking is paused".to_owned());
                format!(
                    "{qname} is not blocked for group {group}: {why}; rule {rule} of {src} would block it"
                )
            }
            (Action::Pass, Some((src, rule))) => {
                let mut s = format!("{qname} is allowed for group {group} by rule {rule} of {src}");
                if let Some(off) = off {
                    s.push_str(&format!(" ({off} anyway)"));
                }
                s
            }
            (Action::Pass, None) => match off {
                Some(off) => format!(
                    "{qname} is not blocked for group {group}: {off}; no rule would block it either"
                ),
                None => {
                    let mut s =
                        format!("{qname} is not blocked for group {group}: no rule matches");
                    if let Some(p) = paused_until() {
                        s.push_str(&format!(" ({p})"));
                    }
                    s
                }
            },
        }
    }
}

/// The text the policy decides on for a query name: its labels as sent, lowercased, joined
/// by dots, no final dot and no escaping. The fast path (`fast::parse`) builds the same text
/// from the packet, so both paths match lists, regex rules and `check` on one spelling;
/// hickory's `Display` would escape some labels (`-a` becomes `\-a`) and a regex rule or
/// list entry would then see another name on the hickory path than on the fast path.
pub fn policy_name(name: &hickory_proto::rr::Name) -> String {
    let mut out = String::new();
    for label in name.iter() {
        if !out.is_empty() {
            out.push('.');
        }
        out.extend(label.iter().map(|c| char::from(c.to_ascii_lowercase())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lists::parse;
    use appliance::model::ListFormat;

    const CFG: &str = r#"
version = 1
[interfaces.lan]
device = "eth1"
addresses = ["192.168.1.1/24"]
[vlans.iot]
parent = "lan"
id = 20
addresses = ["192.168.20.1/24"]
[firewall.zones.lan]
interfaces = ["lan"]
[firewall.zones.iot]
interfaces = ["iot"]
[dns]
allow = ["good.ads.example", "/^keep[0-9]\\./"]
deny = ["*.evil.example"]
[dns.lists.ads]
url = "https://lists.example/ads.txt"
[dns.lists.social]
url = "https://lists.example/social.txt"
[dns.lists.off]
url = "https://lists.example/off.txt"
enabled = false
[dns.groups.kids]
cidrs = ["192.168.1.64/26"]
lists = ["ads", "social"]
block_mode = "nxdomain"
deny = ["games.example"]
[dns.groups.things]
zones = ["iot"]
lists = ["ads"]
[dns.groups.trusted]
cidrs = ["192.168.1.10/32"]
blocking = false
"#;

    fn lists() -> Lists {
        let mk = |t: &str| Arc::new(CompiledList::compile(parse(t, ListFormat::Auto)).unwrap());
        let mut l = Lists::new();
        l.insert(
            "ads".into(),
            mk("ads.example\n@@||fine.ads.example^\nkeep1.example\n"),
        );
        l.insert("social".into(), mk("social.example\n"));
        l.insert("off".into(), mk("off.example\n"));
        l
    }

    fn policy() -> Policy {
        Policy::build(&appliance::load_str(CFG).unwrap(), &lists()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_group_uses_every_enabled_list() {
        let p = policy();
        let d = p.decide(ip("192.168.1.5"), Some("lan"), "x.ads.example");
        assert_eq!(d.group, "default");
        assert!(matches!(
            d.action,
            Action::Block {
                mode: BlockMode::Null,
                ..
            }
        ));
        assert_eq!(
            d.rule,
            Some((
                Source::List("ads".into()),
                Rule::Domain("ads.example".into())
            ))
        );
        assert!(matches!(
            p.decide(ip("192.168.1.5"), None, "social.example").action,
            Action::Block { .. }
        ));
        assert_eq!(
            p.decide(ip("192.168.1.5"), None, "off.example").action,
            Action::Pass
        );
    }

    #[test]
    fn allow_wins_over_lists_and_deny() {
        let p = policy();
        let d = p.decide(ip("192.168.1.5"), None, "good.ads.example");
        assert_eq!(d.action, Action::Pass);
        assert_eq!(
            d.rule,
            Some((Source::Global, Rule::Domain("good.ads.example".into())))
        );
        let d = p.decide(ip("192.168.1.5"), None, "fine.ads.example");
        assert_eq!(
            d.rule,
            Some((
                Source::List("ads".into()),
                Rule::Exception("fine.ads.example".into())
            ))
        );
        assert_eq!(
            p.decide(ip("192.168.1.5"), None, "keep1.example").action,
            Action::Pass
        );
        assert!(matches!(
            p.decide(ip("192.168.1.5"), None, "a.evil.example").action,
            Action::Block { .. }
        ));
        assert_eq!(
            p.decide(ip("192.168.1.5"), None, "evil.example").action,
            Action::Pass
        );
    }

    #[test]
    fn groups_by_cidr_and_zone_with_their_own_lists_and_mode() {
        let p = policy();
        let d = p.decide(ip("192.168.1.70"), Some("lan"), "games.example");
        assert_eq!(d.group, "kids");
        assert!(matches!(
            d.action,
            Action::Block {
                mode: BlockMode::Nxdomain,
                ..
            }
        ));
        let d = p.decide(ip("192.168.20.9"), Some("iot"), "social.example");
        assert_eq!(d.group, "things");
        assert_eq!(d.action, Action::Pass, "things only use the ads list");
        let d = p.decide(ip("192.168.1.10"), Some("lan"), "ads.example");
        assert_eq!(d.group, "trusted");
        assert_eq!(d.action, Action::Pass);
    }

    #[test]
    fn pause_globally_or_per_group() {
        let mut p = policy();
        p.pause(Some("kids"), Duration::from_secs(60));
        let kid = p.decide(ip("192.168.1.70"), None, "ads.example");
        assert_eq!(kid.action, Action::Pass);
        assert!(kid.paused);
        assert!(matches!(
            p.decide(ip("192.168.1.5"), None, "ads.example").action,
            Action::Block { .. }
        ));
        let later = Instant::now() + Duration::from_secs(61);
        assert!(matches!(
            p.decide_at(ip("192.168.1.70"), None, "ads.example", later, false)
                .action,
            Action::Block { .. }
        ));
        p.pause(None, Duration::from_secs(60));
        assert_eq!(
            p.decide(ip("192.168.1.5"), None, "ads.example").action,
            Action::Pass
        );
        p.resume(None);
        assert!(matches!(
            p.decide(ip("192.168.1.5"), None, "ads.example").action,
            Action::Block { .. }
        ));
    }

    /// Admin allow > admin deny > a list's exceptions > a list's blocks.
    #[test]
    fn own_deny_beats_a_list_exception_and_own_allow_beats_all() {
        let cfg = appliance::load_str(
            &CFG.replace(
                "deny = [\"*.evil.example\"]",
                "deny = [\"*.evil.example\", \"fine.ads.example\"]",
            )
            .replace(
                "deny = [\"games.example\"]",
                "deny = [\"games.example\", \"ok.ads.example\"]",
            ),
        )
        .unwrap();
        let mut l = lists();
        l.insert(
            "ads".into(),
            Arc::new(
                CompiledList::compile(parse(
                    "ads.example\n@@||fine.ads.example^\n@@||ok.ads.example^\n@@||good.ads.example^\n",
                    ListFormat::Auto,
                ))
                .unwrap(),
            ),
        );
        let p = Policy::build(&cfg, &l).unwrap();
        let d = p.decide(ip("192.168.1.5"), None, "fine.ads.example");
        assert!(matches!(d.action, Action::Block { .. }), "{d:?}");
        assert_eq!(
            d.rule,
            Some((Source::Global, Rule::Domain("fine.ads.example".into())))
        );
        let kid = p.decide(ip("192.168.1.70"), None, "ok.ads.example");
        assert!(matches!(kid.action, Action::Block { .. }), "{kid:?}");
        assert_eq!(kid.rule.unwrap().0, Source::Group("kids".into()));
        // The list's exception still beats the list's own block where no admin rule says.
        let d = p.decide(ip("192.168.1.5"), None, "ok.ads.example");
        assert_eq!(d.action, Action::Pass);
        assert_eq!(d.rule.unwrap().0, Source::List("ads".into()));
        // The admin's allow beats the admin's deny.
        let cfg = appliance::load_str(&CFG.replace(
            "deny = [\"*.evil.example\"]",
            "deny = [\"*.evil.example\", \"good.ads.example\"]",
        ))
        .unwrap();
        let p = Policy::build(&cfg, &lists()).unwrap();
        let d = p.decide(ip("192.168.1.5"), None, "good.ads.example");
        assert_eq!(d.action, Action::Pass);
        assert_eq!(d.rule.unwrap().0, Source::Global);
    }

    /// An exact allow entry allows that name only; `*.name` allows its subdomains. An
    /// exact deny entry still blocks the subdomains too.
    #[test]
    fn exact_allow_is_exact_and_a_wildcard_allows_the_subtree() {
        let p = policy();
        let d = p.decide(ip("192.168.1.5"), None, "good.ads.example");
        assert_eq!(d.action, Action::Pass);
        let d = p.decide(ip("192.168.1.5"), None, "tracker.good.ads.example");
        assert!(matches!(d.action, Action::Block { .. }), "{d:?}");
        assert_eq!(
            d.rule,
            Some((
                Source::List("ads".into()),
                Rule::Domain("ads.example".into())
            ))
        );
        let cfg = appliance::load_str(&CFG.replace(
            "allow = [\"good.ads.example\", ",
            "allow = [\"*.good.ads.example\", ",
        ))
        .unwrap();
        let p = Policy::build(&cfg, &lists()).unwrap();
        let d = p.decide(ip("192.168.1.5"), None, "tracker.good.ads.example");
        assert_eq!(d.action, Action::Pass);
        assert_eq!(
            d.rule,
            Some((Source::Global, Rule::Wildcard("good.ads.example".into())))
        );
        let kid = p.decide(ip("192.168.1.70"), None, "www.games.example");
        assert!(matches!(kid.action, Action::Block { .. }), "{kid:?}");
    }

    /// A group's own `blocking` wins over `dns.blocking`; a group without one follows it.
    #[test]
    fn a_group_blocking_overrides_the_global_switch() {
        let cfg = appliance::load_str(
            &CFG.replace("[dns]\n", "[dns]\nblocking = false\n").replace(
                "block_mode = \"nxdomain\"\n",
                "block_mode = \"nxdomain\"\nblocking = true\n",
            ),
        )
        .unwrap();
        let p = Policy::build(&cfg, &lists()).unwrap();
        let kid = p.decide(ip("192.168.1.70"), None, "ads.example");
        assert!(matches!(kid.action, Action::Block { .. }), "{kid:?}");
        let d = p.decide(ip("192.168.1.5"), None, "ads.example");
        assert_eq!((d.group.as_str(), d.action), ("default", Action::Pass));
        let d = p.decide(ip("192.168.20.9"), Some("iot"), "ads.example");
        assert_eq!((d.group.as_str(), d.action), ("things", Action::Pass));
        // Blocking on globally: the group without a setting blocks, the exempt one does not.
        let p = policy();
        assert!(matches!(
            p.decide(ip("192.168.20.9"), Some("iot"), "ads.example")
                .action,
            Action::Block { .. }
        ));
        assert_eq!(
            p.decide(ip("192.168.1.10"), None, "ads.example").action,
            Action::Pass
        );
    }

    /// The most specific group wins, whatever the names: a /32 over a /24, any CIDR over
    /// an interface, an interface over a zone; among equals the first in name order.
    #[test]
    fn the_most_specific_group_wins() {
        let cfg = appliance::load_str(&format!(
            "{}{}",
            CFG.split("[dns.groups.kids]").next().unwrap(),
            r#"
[dns.groups.a_zone]
zones = ["lan", "iot"]
[dns.groups.b_interface]
interfaces = ["lan"]
[dns.groups.c_net]
cidrs = ["192.168.1.0/24", "10.0.0.0/8"]
[dns.groups.d_host]
cidrs = ["192.168.1.7/32"]
[dns.groups.e_host]
cidrs = ["192.168.1.0/25", "192.168.1.7/32"]
"#
        ))
        .unwrap();
        let p = Policy::build(&cfg, &lists()).unwrap();
        let group =
            |client: &str, link: Option<&str>| p.decide(ip(client), link, "x.example").group;
        assert_eq!(
            group("192.168.1.7", Some("lan")),
            "d_host",
            "/32 over /25, /24, link; d before e"
        );
        assert_eq!(group("192.168.1.8", Some("lan")), "e_host", "/25 over /24");
        assert_eq!(group("192.168.1.200", Some("lan")), "c_net");
        assert_eq!(
            group("10.1.2.3", Some("iot")),
            "c_net",
            "a CIDR over a zone"
        );
        assert_eq!(
            group("172.16.0.9", Some("lan")),
            "b_interface",
            "an interface over a zone"
        );
        assert_eq!(group("192.168.20.9", Some("iot")), "a_zone");
        assert_eq!(group("172.16.0.9", None), "default");
    }

    /// `check` says why nothing is blocked when blocking is off or paused, and still names
    /// the rule that would block; the query path does not look for it.
    #[test]
    fn explain_says_when_blocking_is_off_or_paused() {
        let client = ip("192.168.1.5");
        let cfg =
            appliance::load_str(&CFG.replace("[dns]\n", "[dns]\nblocking = false\n")).unwrap();
        let p = Policy::build(&cfg, &lists()).unwrap();
        assert_eq!(
            p.explain(client, None, "x.ads.example"),
            "x.ads.example is not blocked for group default: blocking is off (dns.blocking = false); rule ads.example of list ads would block it"
        );
        let d = p.decide(client, None, "x.ads.example");
        assert_eq!(
            (d.action, d.rule, d.off),
            (Action::Pass, None, Some(Off::Global))
        );
        let d = p.check(client, None, "x.ads.example");
        assert!(d.held && !d.paused, "{d:?}");
        assert_eq!(d.rule.unwrap().0, Source::List("ads".into()));
        assert_eq!(
            p.explain(client, None, "example.org"),
            "example.org is not blocked for group default: blocking is off (dns.blocking = false); no rule would block it either"
        );
        assert_eq!(
            p.explain(client, None, "good.ads.example"),
            "good.ads.example is allowed for group default by rule good.ads.example of dns settings (blocking is off (dns.blocking = false) anyway)"
        );

        let cfg = appliance::load_str(&CFG.replace(
            "blocking = false\n",
            "blocking = false\nlists = [\"ads\"]\n",
        ))
        .unwrap();
        let p = Policy::build(&cfg, &lists()).unwrap();
        assert_eq!(
            p.explain(ip("192.168.1.10"), None, "ads.example"),
            "ads.example is not blocked for group trusted: group trusted has blocking off (dns.groups.trusted.blocking = false); rule ads.example of list ads would block it"
        );

        let cfg = appliance::load_str(&CFG.replace("[dns]\n", "[dns]\nenabled = false\n")).unwrap();
        let p = Policy::build(&cfg, &lists()).unwrap();
        assert_eq!(
            p.explain(ip("192.168.1.70"), None, "games.example"),
            "games.example is not blocked for group kids: DNS is off (dns.enabled = false); rule games.example of group kids would block it"
        );

        let mut p = policy();
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        p.pauses
            .insert(Some("kids".into()), now + Duration::from_secs(60));
        assert_eq!(
            p.explain_at(ip("192.168.1.70"), None, "ads.example", now, wall),
            "ads.example is not blocked for group kids: blocking is paused for this group until Tue, 14 Nov 2023 22:14:20 GMT; rule ads.example of list ads would block it"
        );
        p.pauses.insert(None, now + Duration::from_secs(120));
        assert_eq!(
            p.explain_at(ip("192.168.1.70"), None, "example.org", now, wall),
            "example.org is not blocked for group kids: no rule matches (blocking is paused until Tue, 14 Nov 2023 22:15:20 GMT)"
        );
    }

    #[test]
    fn explain_names_list_and_rule() {
        let p = policy();
        let s = p.explain(ip("192.168.1.5"), None, "x.ads.example");
        assert_eq!(
            s,
            "x.ads.example is blocked for group default by rule ads.example of list ads (answered as 0.0.0.0 / ::)"
        );
        let s = p.explain(ip("192.168.1.5"), None, "example.org");
        assert!(s.contains("no rule matches"), "{s}");
    }

    #[test]
    fn both_paths_give_the_policy_the_same_name() {
        // From the fuzzer (dns_fast): a label starting with '-', which hickory escapes.
        let packet = [
            0x0a, 0xdf, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2, b'-', b'a', 0, 0, 1, 0, 1,
        ];
        let mut fast_name = String::new();
        crate::fast::parse(&packet, &mut fast_name).unwrap();
        let m = hickory_proto::op::Message::from_vec(&packet).unwrap();
        let hickory_name = policy_name(m.queries[0].name());
        assert_eq!(fast_name, "-a");
        assert_eq!(hickory_name, fast_name);
        // Uppercase in the packet: both lowercase it.
        let mut upper = packet;
        upper[14] = b'A';
        crate::fast::parse(&upper, &mut fast_name).unwrap();
        let m = hickory_proto::op::Message::from_vec(&upper).unwrap();
        assert_eq!(fast_name, "-a");
        assert_eq!(policy_name(m.queries[0].name()), "-a");

        // A regex rule and `check` (which decides on the typed name) see that same text.
        let cfg = CFG.replace(
            "deny = [\"*.evil.example\"]",
            "deny = [\"*.evil.example\", \"/^-a$/\"]",
        );
        let p = Policy::build(&appliance::load_str(&cfg).unwrap(), &lists()).unwrap();
        for name in [&fast_name, &hickory_name] {
            let d = p.decide(ip("192.168.1.5"), Some("lan"), name);
            assert!(matches!(d.action, Action::Block { .. }), "{name}");
        }
    }
}
