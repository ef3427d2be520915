//! The incremental planner: the commands that turn the table netd wrote last into the
//! desired one without replacing it, so that a changed port forward costs a few commands
//! and the counters of everything else survive.
//!
//! Pure, and only sound while the kernel still holds exactly what was last written (the
//! caller checks the ruleset generation). The units of change:
//!
//! - named sets: elements added and deleted (a zone's addresses);
//! - chains: added (a new port forward's chain), or flushed and deleted;
//! - rules: a chain whose rule list differs is flushed and refilled in one go. Rules have
//!   no identity of their own but their handles, which only a listing would tell (and a
//!   listing of a table with a 100k-element set costs most of a second), so the chain is
//!   the unit. Port forwards have a chain each, so one forward touches one small chain
//!   plus the zone's dispatch rule.
//!
//! Anything else (a base chain's hook or policy, a set's type) returns `None`: replace
//! the table.

use std::collections::BTreeMap;

use nftables::schema::{Chain, Element, FlushObject, NfCmd, NfListObject, NfObject, Rule, Set};
use serde_json::Value;

use super::ruleset::Ruleset;

/// What an incremental update does, for plans and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub commands: Vec<NfObject<'static>>,
    pub elements_added: usize,
    pub elements_deleted: usize,
    pub chains_added: usize,
    pub chains_deleted: usize,
    pub chains_rewritten: Vec<String>,
    pub sets_added: usize,
    pub sets_deleted: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let mut n = |count: usize, what: &str| {
            if count > 0 {
                parts.push(format!("{count} {what}"));
            }
        };
        n(self.sets_added, "set(s) added");
        n(self.chains_added, "chain(s) added");
        n(self.elements_added, "set element(s) added");
        n(self.elements_deleted, "set element(s) deleted");
        n(self.chains_rewritten.len(), "chain(s) rewritten");
        n(self.chains_deleted, "chain(s) deleted");
        n(self.sets_deleted, "set(s) deleted");
        let mut s = parts.join(", ");
        if !self.chains_rewritten.is_empty() {
            s.push_str(&format!(" ({})", self.chains_rewritten.join(", ")));
        }
        s
    }
}

/// JSON is the comparison: schema values do not always survive a round trip through
/// the state file as equal values (an unset counter comes back as zero), their JSON does.
fn same<T: PartialEq + serde::Serialize>(a: &T, b: &T) -> bool {
    a == b || serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

#[derive(Default)]
struct Parts<'a> {
    sets: BTreeMap<&'a str, &'a Set<'static>>,
    chains: BTreeMap<&'a str, &'a Chain<'static>>,
    /// Rules by chain, in order.
    rules: BTreeMap<&'a str, Vec<&'a Rule<'static>>>,
    /// Chains in declaration order, so that new chains are added in a stable order.
    chain_order: Vec<&'a str>,
    other: bool,
}

fn parts(rs: &Ruleset) -> Parts<'_> {
    let mut p = Parts::default();
    for o in rs.objects() {
        match o {
            NfListObject::Set(s) => {
                p.sets.insert(&s.name, s);
            }
            NfListObject::Chain(c) => {
                p.chains.insert(&c.name, c);
                p.chain_order.push(&c.name);
            }
            NfListObject::Rule(r) => p.rules.entry(&r.chain).or_default().push(r),
            _ => p.other = true,
        }
    }
    p
}

fn cmd(c: NfCmd<'static>) -> NfObject<'static> {
    NfObject::CmdObject(c)
}

fn element(set: &Set<'static>, elem: Vec<Value>) -> Option<NfListObject<'static>> {
    let elem = serde_json::from_value(Value::Array(elem)).ok()?;
    Some(NfListObject::Element(Element {
        family: set.family,
        table: set.table.clone(),
        name: set.name.clone(),
        elem,
    }))
}

fn elements(set: &Set<'static>) -> BTreeMap<String, Value> {
    set.elem
        .iter()
        .flat_map(|e| e.iter())
        .filter_map(|e| serde_json::to_value(e).ok())
        .map(|v| (v.to_string(), v))
        .collect()
}

fn without_elements(set: &Set<'static>) -> Set<'static> {
    Set {
        elem: None,
        handle: None,
        ..set.clone()
    }
}

/// The commands from `old` (what the kernel holds) to `new`, or `None` when only a new
/// table will do. An empty result means the two are the same.
pub fn incremental(old: &Ruleset, new: &Ruleset) -> Option<Changes> {
    if old.objects() == new.objects() {
        return Some(Changes::default());
    }
    let (o, n) = (parts(old), parts(new));
    // a rule in an undeclared chain: let nft refuse the whole new table, with its culprit
    if o.other || n.other || n.rules.keys().any(|c| !n.chains.contains_key(c)) {
        return None;
    }
    let mut ch = Changes::default();
    let mut adds = Vec::new();
    let mut elems = Vec::new();
    let mut rewrites = Vec::new();
    let mut deletes = Vec::new();

    for (name, set) in &n.sets {
        match o.sets.get(name) {
            None => {
                adds.push(cmd(NfCmd::Add(NfListObject::Set(Box::new((*set).clone())))));
                ch.sets_added += 1;
            }
            Some(was) => {
                if !same(&without_elements(was), &without_elements(set)) {
                    return None;
                }
                let (before, after) = (elements(was), elements(set));
                let gone: Vec<Value> = before
                    .iter()
                    .filter(|(k, _)| !after.contains_key(*k))
                    .map(|(_, v)| v.clone())
                    .collect();
                let came: Vec<Value> = after
                    .iter()
                    .filter(|(k, _)| !before.contains_key(*k))
                    .map(|(_, v)| v.clone())
                    .collect();
                ch.elements_deleted += gone.len();
                ch.elements_added += came.len();
                if !gone.is_empty() {
                    elems.push(cmd(NfCmd::Delete(element(set, gone)?)));
                }
                if !came.is_empty() {
                    elems.push(cmd(NfCmd::Add(element(set, came)?)));
                }
            }
        }
    }
    for name in &n.chain_order {
        let chain = n.chains.get(name)?;
        match o.chains.get(name) {
            None => {
                adds.push(cmd(NfCmd::Add(NfListObject::Chain((*chain).clone()))));
                ch.chains_added += 1;
            }
            Some(was) if !same(*was, *chain) => return None,
            Some(_) => {}
        }
    }
    let no_rules = Vec::new();
    for name in &n.chain_order {
        let (was, is) = (
            o.rules.get(name).unwrap_or(&no_rules),
            n.rules.get(name).unwrap_or(&no_rules),
        );
        let fresh = !o.chains.contains_key(name);
        let differs = was.len() != is.len() || was.iter().zip(is).any(|(a, b)| !same(*a, *b));
        if !fresh && !differs {
            continue;
        }
        let chain = n.chains.get(name)?;
        if !fresh {
            rewrites.push(cmd(NfCmd::Flush(FlushObject::Chain((*chain).clone()))));
            ch.chains_rewritten.push((*name).to_owned());
        }
        rewrites.extend(
            is.iter()
                .map(|r| cmd(NfCmd::Add(NfListObject::Rule((*r).clone())))),
        );
    }
    // Rules may name chains and sets that go: those rules were flushed above, and a
    // deleted element no longer jumps anywhere, so deletions come last.
    for name in o.chain_order.iter().filter(|c| !n.chains.contains_key(*c)) {
        let chain = o.chains.get(name)?;
        deletes.push(cmd(NfCmd::Flush(FlushObject::Chain((*chain).clone()))));
        deletes.push(cmd(NfCmd::Delete(NfListObject::Chain(Chain {
            handle: None,
            ..(*chain).clone()
        }))));
        ch.chains_deleted += 1;
    }
    for set in o
        .sets
        .iter()
        .filter(|(k, _)| !n.sets.contains_key(*k))
        .map(|(_, s)| s)
    {
        deletes.push(cmd(NfCmd::Delete(NfListObject::Set(Box::new(
            without_elements(set),
        )))));
        ch.sets_deleted += 1;
    }
    ch.commands = adds
        .into_iter()
        .chain(elems)
        .chain(rewrites)
        .chain(deletes)
        .collect();
    Some(ch)
}

#[cfg(test)]
mod tests {
    use nftables::schema::SetTypeValue;

    use super::*;
    use crate::firewall::render::tests::rich;

    #[test]
    fn the_same_ruleset_needs_no_command() {
        assert!(incremental(&rich(), &rich()).unwrap().is_empty());
    }

    fn edited(rs: &Ruleset, f: impl Fn(&mut NfListObject<'static>)) -> Ruleset {
        let mut out = Ruleset::default();
        for o in rs.objects() {
            let mut o = o.clone();
            f(&mut o);
            out.push(o);
        }
        out
    }

    #[test]
    fn a_set_of_another_type_needs_a_new_table() {
        let changed = edited(&rich(), |o| {
            if let NfListObject::Set(s) = o {
                s.set_type = SetTypeValue::Single(nftables::schema::SetType::Ipv6Addr);
            }
        });
        assert_eq!(incremental(&rich(), &changed), None);
    }

    #[test]
    fn one_changed_rule_rewrites_its_chain_only() {
        let changed = edited(&rich(), |o| {
            if let NfListObject::Rule(r) = o
                && r.comment.as_deref() == Some("zone lan output")
            {
                r.comment = Some("renamed".into());
            }
        });
        let ch = incremental(&rich(), &changed).unwrap();
        assert_eq!(ch.chains_rewritten, ["output_lan"]);
        assert_eq!(ch.summary(), "1 chain(s) rewritten (output_lan)");
        // flush, then every rule of the chain again
        let rules = changed
            .objects()
            .iter()
            .filter(|o| matches!(o, NfListObject::Rule(r) if r.chain == "output_lan"))
            .count();
        assert_eq!(ch.commands.len(), 1 + rules);
        assert!(matches!(
            ch.commands.first(),
            Some(NfObject::CmdObject(NfCmd::Flush(FlushObject::Chain(c)))) if c.name == "output_lan"
        ));
    }
}
