//! What a new config changes, section by section, compared with the current one.
//!
//! Both configs are compared in their normalized form (the typed model serialized back),
//! so reordering keys, reformatting or spelling a value differently (`24h` and `1d`)
//! changes nothing. A named-map entry that appears or disappears is one change, not one
//! per key.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::diag::KeyPath;
use crate::model::Config;

/// One difference between two configs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// The top-level section, like `vlans`.
    pub section: String,
    pub path: KeyPath,
    pub op: Op,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Add,
    Remove,
    Change,
}

/// The daemons a section concerns; a plan tells which of them must act. netd owns the
/// network sections, but dnsd reads several of them too: the LAN addresses it answers
/// for its own name (interfaces, vlans, bridges), the zones that put clients in groups
/// (firewall), the lease names it serves (dhcp), the hostname and domain (system) and a
/// tunnel's addresses, which `dns.listen` and a group's `interfaces` may name (wireguard).
pub fn owners(section: &str) -> &'static [&'static str] {
    match section {
        "interfaces" | "vlans" | "bridges" | "dhcp" | "firewall" | "wireguard" => &["netd", "dnsd"],
        "dns" => &["dnsd"],
        "storage" | "shares" | "snapshots" | "replication" => &["stored"],
        "system" => &["applianced", "dnsd"],
        _ => &["applianced"],
    }
}

/// Whether `change` concerns `daemon`. dnsd only cares about the other sections while it
/// serves (a change of `dns` itself, enabling or disabling it, always concerns it); of
/// `firewall` only about which links a zone holds, and of `system` only about the names
/// it answers for, so that a firewall rule or the time zone does not reload it.
fn concerns(daemon: &str, change: &Change, dns_enabled: bool) -> bool {
    use crate::diag::Seg;
    if !owners(&change.section).contains(&daemon) {
        return false;
    }
    if daemon != "dnsd" || change.section == "dns" {
        return true;
    }
    let key = |i: usize| match change.path.segments().get(i) {
        Some(Seg::Key(k)) => Some(k.as_str()),
        _ => None,
    };
    let relevant = match change.section.as_str() {
        // A whole zone (added or removed) or its interfaces.
        "firewall" => {
            key(1) == Some("zones")
                && (change.path.segments().len() == 3 || key(3) == Some("interfaces"))
        }
        "system" => matches!(key(1), Some("hostname" | "domain")),
        // A whole tunnel or its addresses; its peers and keys are netd's alone.
        "wireguard" => change.path.segments().len() == 2 || key(2) == Some("addresses"),
        _ => true,
    };
    dns_enabled && relevant
}

/// Sections whose changes could cut the administrator off, so applying them waits for a
/// confirmation and reverts without one.
pub fn needs_confirm(section: &str) -> bool {
    matches!(
        section,
        "interfaces" | "vlans" | "bridges" | "firewall" | "wireguard" | "api"
    )
}

/// The difference between two configs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Daemons that have something to do, in apply order.
    pub daemons: Vec<&'static str>,
    /// Whether applying should wait for `applctl confirm`.
    pub needs_confirm: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// A diff a person can read, grouped by section. `color` adds ANSI colour.
    pub fn render(&self, color: bool) -> String {
        let (green, red, yellow, bold, reset) = if color {
            ("\x1b[32m", "\x1b[31m", "\x1b[33m", "\x1b[1m", "\x1b[0m")
        } else {
            ("", "", "", "", "")
        };
        if self.changes.is_empty() {
            return "No changes: the config matches the current generation.\n".into();
        }
        let mut out = String::new();
        let mut section = "";
        for c in &self.changes {
            if c.section != section {
                section = &c.section;
                // The daemons of this section that act in this plan (a firewall rule
                // alone does not concern dnsd, even though some firewall keys do).
                let acting: Vec<&str> = owners(section)
                    .iter()
                    .copied()
                    .filter(|d| self.daemons.contains(d))
                    .collect();
                let _ = writeln!(out, "{bold}{section}{reset} ({})", acting.join(", "));
            }
            match c.op {
                Op::Add => {
                    let _ = writeln!(
                        out,
                        "  {green}+ {} = {}{reset}",
                        c.path,
                        inline(c.new.as_ref())
                    );
                }
                Op::Remove => {
                    let _ = writeln!(
                        out,
                        "  {red}- {} = {}{reset}",
                        c.path,
                        inline(c.old.as_ref())
                    );
                }
                Op::Change => {
                    let _ = writeln!(
                        out,
                        "  {yellow}~ {}: {} -> {}{reset}",
                        c.path,
                        inline(c.old.as_ref()),
                        inline(c.new.as_ref())
                    );
                }
            }
        }
        let sections: Vec<&str> = {
            let mut v: Vec<&str> = self.changes.iter().map(|c| c.section.as_str()).collect();
            v.dedup();
            v
        };
        let n = self.changes.len();
        let _ = writeln!(
            out,
            "\n{n} change{} in {} section{} ({}); daemons to apply: {}.",
            if n == 1 { "" } else { "s" },
            sections.len(),
            if sections.len() == 1 { "" } else { "s" },
            sections.join(", "),
            self.daemons.join(", ")
        );
        if self.needs_confirm {
            out.push_str(
                "This change touches interfaces, firewall, WireGuard or the API: it is applied \
                 with a confirm window and reverted unless confirmed.\n",
            );
        }
        out
    }
}

/// Compares `old` (None: an empty appliance) with `new`.
pub fn diff(old: Option<&Config>, new: &Config) -> Plan {
    let a = old
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or(Value::Object(serde_json::Map::new()));
    let b = serde_json::to_value(new).unwrap_or(Value::Null);
    let mut changes = Vec::new();
    walk(&KeyPath::root(), Some(&a), Some(&b), &mut changes);
    // Sections in the order of the file format, so the diff reads like the file.
    let order: Vec<String> = match &b {
        Value::Object(m) => m.keys().cloned().collect(),
        _ => Vec::new(),
    };
    changes.sort_by_key(|c| {
        order
            .iter()
            .position(|s| *s == c.section)
            .unwrap_or(usize::MAX)
    });
    // Either side serving DNS is enough: a change that also turns dns off still has to
    // reach dnsd, and that one is in the dns section anyway.
    let dns_enabled = new.dns.enabled || old.is_some_and(|c| c.dns.enabled);
    let mut daemons: Vec<&'static str> = Vec::new();
    // Apply order: the network first, since dnsd binds to and answers with its addresses.
    for d in ["netd", "dnsd", "stored", "applianced"] {
        if changes.iter().any(|c| concerns(d, c, dns_enabled)) {
            daemons.push(d);
        }
    }
    let needs_confirm = changes.iter().any(|c| needs_confirm(&c.section));
    Plan {
        changes,
        daemons,
        needs_confirm,
    }
}

fn section_of(path: &KeyPath) -> String {
    match path.segments().first() {
        Some(crate::diag::Seg::Key(k)) => k.clone(),
        _ => String::new(),
    }
}

/// Whether a value that only one side has should be compared against an empty container
/// rather than reported whole: sections, named maps and arrays of tables, so that a new
/// section lists its entries and a new entry is one change.
fn is_container(path: &KeyPath, v: &Value) -> bool {
    match v {
        Value::Object(m) => {
            path.segments().len() <= 1 || (!m.is_empty() && m.values().all(Value::is_object))
        }
        Value::Array(a) => !a.is_empty() && a.iter().all(Value::is_object),
        _ => false,
    }
}

fn empty_like(v: &Value) -> Value {
    match v {
        Value::Array(_) => Value::Array(Vec::new()),
        _ => Value::Object(serde_json::Map::new()),
    }
}

fn walk(path: &KeyPath, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<Change>) {
    match (a, b) {
        (None, Some(y)) if is_container(path, y) => walk(path, Some(&empty_like(y)), Some(y), out),
        (Some(x), None) if is_container(path, x) => walk(path, Some(x), Some(&empty_like(x)), out),
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            for (k, va) in x {
                walk(&path.clone().key(k), Some(va), y.get(k), out);
            }
            for (k, vb) in y {
                if !x.contains_key(k) {
                    walk(&path.clone().key(k), None, Some(vb), out);
                }
            }
        }
        // Arrays of tables (rules, leases) are compared entry by entry; arrays of plain
        // values as a whole, which reads better for address and port lists.
        (Some(Value::Array(x)), Some(Value::Array(y)))
            if x.iter().chain(y.iter()).all(Value::is_object)
                && !(x.is_empty() && y.is_empty()) =>
        {
            for i in 0..x.len().max(y.len()) {
                walk(&path.clone().index(i), x.get(i), y.get(i), out);
            }
        }
        (Some(x), Some(y)) if x == y => {}
        (None, None) => {}
        (old, new) => {
            // A table that only one side has, but is empty, is no change worth showing.
            let empty = |v: Option<&Value>| matches!(v, Some(Value::Object(m)) if m.is_empty());
            if (old.is_none() && empty(new)) || (new.is_none() && empty(old)) {
                return;
            }
            let op = match (old, new) {
                (None, _) => Op::Add,
                (_, None) => Op::Remove,
                _ => Op::Change,
            };
            out.push(Change {
                section: section_of(path),
                path: path.clone(),
                op,
                old: old.cloned(),
                new: new.cloned(),
            });
        }
    }
}

/// A value as inline TOML.
fn inline(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "(nothing)".into(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(Value::Array(a)) => {
            let items: Vec<String> = a.iter().map(|x| inline(Some(x))).collect();
            format!("[{}]", items.join(", "))
        }
        Some(Value::Object(m)) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, x)| format!("{k} = {}", inline(Some(x))))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_str;

    fn cfg(extra: &str) -> Config {
        load_str(&format!("{}\n{extra}", crate::DEFAULT_CONFIG)).unwrap()
    }

    #[test]
    fn same_config_plans_nothing() {
        let a = cfg("");
        let p = diff(Some(&a), &a);
        assert!(p.is_empty());
        assert!(p.daemons.is_empty());
        assert!(p.render(false).starts_with("No changes"));
    }

    #[test]
    fn equivalent_spelling_is_no_change() {
        let a = cfg("");
        let b = load_str(
            &crate::DEFAULT_CONFIG.replace("lease_time = \"12h\"", "lease_time = \"720m\""),
        )
        .unwrap();
        assert!(diff(Some(&a), &b).is_empty());
    }

    #[test]
    fn added_vlan_is_one_change_for_netd_with_confirm() {
        let a = cfg("");
        let b = cfg("[vlans.iot]\nparent = \"lan\"\nid = 20\naddresses = [\"192.168.20.1/24\"]\n");
        let p = diff(Some(&a), &b);
        assert_eq!(p.changes.len(), 1);
        assert_eq!(p.changes[0].path.to_string(), "vlans.iot");
        assert_eq!(p.changes[0].op, Op::Add);
        // dnsd answers its own name with the LAN addresses, a VLAN's among them.
        assert_eq!(p.daemons, vec!["netd", "dnsd"]);
        assert!(p.needs_confirm);
        let text = p.render(false);
        assert!(
            text.contains("+ vlans.iot = { parent = \"lan\", id = 20"),
            "{text}"
        );
    }

    #[test]
    fn changed_value_and_dns_only() {
        let a = cfg("");
        let b =
            load_str(&crate::DEFAULT_CONFIG.replace("cache_size = 10000", "cache_size = 20000"))
                .unwrap();
        let p = diff(Some(&a), &b);
        assert_eq!(p.changes.len(), 1);
        assert_eq!(p.changes[0].op, Op::Change);
        assert_eq!(p.changes[0].path.to_string(), "dns.cache_size");
        assert_eq!(p.daemons, vec!["dnsd"]);
        assert!(!p.needs_confirm);
        assert!(p.render(false).contains("~ dns.cache_size: 10000 -> 20000"));
    }

    const IOT: &str = "[vlans.iot]\nparent = \"lan\"\nid = 20\naddresses = [\"192.168.20.1/24\"]\n";

    #[test]
    fn a_link_moved_into_a_zone_is_planned_on_dnsd_after_netd() {
        let a = cfg(IOT);
        let src = crate::DEFAULT_CONFIG
            .replace("interfaces = [\"lan\"]", "interfaces = [\"lan\", \"iot\"]");
        let b = load_str(&format!("{src}\n{IOT}")).unwrap();
        let p = diff(Some(&a), &b);
        assert_eq!(p.changes.len(), 1, "{:?}", p.changes);
        assert_eq!(
            p.changes[0].path.to_string(),
            "firewall.zones.lan.interfaces"
        );
        // dnsd puts the clients of a zone in the zone's groups, so it must see the move.
        assert_eq!(p.daemons, vec!["netd", "dnsd"]);
        assert!(p.render(false).contains("firewall (netd, dnsd)"));
    }

    #[test]
    fn network_changes_leave_dnsd_alone_while_dns_is_off() {
        let off = |extra: &str| {
            load_str(&format!(
                "{}\n{extra}",
                crate::DEFAULT_CONFIG.replace("enabled = true", "enabled = false")
            ))
            .unwrap()
        };
        assert!(!off("").dns.enabled);
        let p = diff(Some(&off("")), &off(IOT));
        assert_eq!(p.daemons, vec!["netd"]);
    }

    #[test]
    fn of_system_only_the_names_concern_dnsd() {
        let a = cfg("");
        let tz = load_str(
            &crate::DEFAULT_CONFIG.replace("timezone = \"UTC\"", "timezone = \"Europe/Paris\""),
        )
        .unwrap();
        assert_eq!(diff(Some(&a), &tz).daemons, vec!["applianced"]);
        let host = load_str(
            &crate::DEFAULT_CONFIG.replace("hostname = \"appliance\"", "hostname = \"gw\""),
        )
        .unwrap();
        assert_eq!(diff(Some(&a), &host).daemons, vec!["dnsd", "applianced"]);
    }

    #[test]
    fn a_firewall_rule_does_not_concern_dnsd_but_a_new_zone_does() {
        let a = cfg("");
        let input = load_str(&crate::DEFAULT_CONFIG.replacen(
            "interfaces = [\"lan\"]\ninput = \"accept\"",
            "interfaces = [\"lan\"]\ninput = \"drop\"",
            1,
        ))
        .unwrap();
        let p = diff(Some(&a), &input);
        assert_eq!(p.changes.len(), 1, "{:?}", p.changes);
        assert_eq!(p.daemons, vec!["netd"]);
        let zone = cfg(&format!(
            "{IOT}[firewall.zones.iot]\ninterfaces = [\"iot\"]\n"
        ));
        let p = diff(Some(&cfg(IOT)), &zone);
        assert_eq!(p.changes.len(), 1, "{:?}", p.changes);
        assert_eq!(p.changes[0].path.to_string(), "firewall.zones.iot");
        assert_eq!(p.daemons, vec!["netd", "dnsd"]);
    }

    #[test]
    fn a_tunnels_addresses_concern_dnsd_but_its_peers_do_not() {
        const WG: &str = "[wireguard.wg0]\nlisten_port = 51820\naddresses = [\"10.8.0.1/24\"]\n";
        const PEER: &str = "[wireguard.wg0.peers.phone]\npublic_key = \"AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=\"\nallowed_ips = [\"10.8.0.2/32\"]\n";
        // dnsd may listen on wg0 or put its clients in a group, so it must see a new tunnel
        // and a readdressed one.
        let p = diff(Some(&cfg("")), &cfg(WG));
        assert_eq!(p.daemons, vec!["netd", "dnsd"]);
        let moved = cfg(&WG.replace("10.8.0.1/24", "10.9.0.1/24"));
        let p = diff(Some(&cfg(WG)), &moved);
        assert_eq!(p.changes.len(), 1, "{:?}", p.changes);
        assert_eq!(p.daemons, vec!["netd", "dnsd"]);
        let p = diff(Some(&cfg(WG)), &cfg(&format!("{WG}{PEER}")));
        assert_eq!(p.changes.len(), 1, "{:?}", p.changes);
        assert_eq!(p.daemons, vec!["netd"]);
    }

    #[test]
    fn removed_rule_is_reported_by_index() {
        let a = cfg("");
        let src = crate::DEFAULT_CONFIG.replace(
            "[[firewall.rules]]\nname = \"wan-ping\"\nfrom = \"wan\"\nprotocol = \"icmp\"\nrate_limit = \"10/second\"\naction = \"accept\"\n",
            "",
        );
        let b = load_str(&src).unwrap();
        let p = diff(Some(&a), &b);
        assert_eq!(p.changes.len(), 1, "{:?}", p.changes);
        assert_eq!(p.changes[0].path.to_string(), "firewall.rules[2]");
        assert_eq!(p.changes[0].op, Op::Remove);
    }

    #[test]
    fn from_nothing_everything_is_added() {
        let b = cfg("");
        let p = diff(None, &b);
        assert!(p.changes.iter().all(|c| c.op == Op::Add));
        assert_eq!(p.daemons, vec!["netd", "dnsd", "applianced"]);
    }
}
